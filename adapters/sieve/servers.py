"""Both servers' ManageSieve as one account's migration uses it: read on the old, write on the new (blocking).

The old server is logged in to as the copy logs in there (the source admin
login, else the user's password); the new one as the user through the master
user (SASL PLAIN with the user as authorization identity, RFC 4616).
Failures leave as the domain's `PasswordRefused` and `MailServerError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailmigrator.adapters.imap.responses import one_line
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress
from mailmigrator.adapters.mail.servers import MailServers, server_errors
from mailmigrator.adapters.sieve.connection import ManageSieve, SieveNotOffered
from mailmigrator.adapters.sieve.protocol import SieveLimits
from mailmigrator.domain.errors import MailServerError, MigrationRefused, PasswordRefused
from mailmigrator.domain.filters import FilterReport, SieveScript, filter_differences

# Scripts of one account read at most: each may be up to `SieveLimits.max_literal` octets.
MAX_SCRIPTS = 100
# A server's reason is kept to this many characters.
MAX_REASON = 300


@dataclass(frozen=True)
class SievePorts:
    """The ManageSieve port of each server (`[source]`/`[target] managesieve_port`)."""

    source: int
    target: int


class SieveServers:
    """ManageSieve on the old and the new server for one account at a time."""

    def __init__(self, servers: MailServers, ports: SievePorts, limits: SieveLimits | None = None) -> None:
        self.servers = servers
        self.source_address: ServerAddress = replace(servers.source.address, port=ports.source)
        self.target_address: ServerAddress = replace(servers.require_target().address, port=ports.target)
        self.limits = limits or SieveLimits()

    def target_plan(self, target_login: str) -> LoginPlan:
        """The user on the new server through the master user, as SASL PLAIN's authorization identity."""
        return LoginPlan(target_login, self.servers.require_target().master, "sasl")

    def copy_filters(self, source_name: str, login: str, password: str | None, target_login: str) -> FilterReport:
        """Read every script on the old server, put each on the new one, activate the old active one there."""
        plan = self.servers.copy_plan(source_name, login, password)
        try:
            with server_errors("ManageSieve on the old server"):
                scripts, old_active = self.read(self.source_address, plan)
        except _NotOffered as e:
            return FilterReport(not_offered=f"the old server does not offer ManageSieve ({e})")
        try:
            with server_errors("ManageSieve on the new server"), \
                    self.open(self.target_address, self.target_plan(target_login)) as new:
                return self.write(new, scripts, old_active)
        except _NotOffered as e:
            reason = f"the new server does not offer ManageSieve ({e})"
            return FilterReport(refused=[s.refused(reason) for s in scripts], old_active=old_active,
                                not_offered=reason)

    def old_scripts(self, source_name: str, login: str, password: str | None) -> tuple[list[SieveScript], str] | None:
        """The account's scripts on the old server and its active one; None when the old server has no ManageSieve."""
        try:
            with server_errors("ManageSieve on the old server"):
                return self.read(self.source_address, self.servers.copy_plan(source_name, login, password))
        except _NotOffered:
            return None

    def open(self, address: ServerAddress, plan: LoginPlan) -> ManageSieve:
        """A logged-in session; `_NotOffered` when nothing listens on the port."""
        try:
            return ManageSieve(address, plan, self.limits)
        except SieveNotOffered as e:
            raise _NotOffered(str(address)) from e

    def read(self, address: ServerAddress, plan: LoginPlan) -> tuple[list[SieveScript], str]:
        """Every script of the account on the server at `address` and the name of the active one ("" none)."""
        with self.open(address, plan) as connection:
            listed = connection.list_scripts()
            if len(listed) > MAX_SCRIPTS:
                raise MigrationRefused(f"{plan.user} has {len(listed)} Sieve scripts on {address}; "
                                       f"at most {MAX_SCRIPTS} are moved (set [migration] sieve = false)")
            scripts = [SieveScript(name, connection.get_script(name)) for name, _ in listed]
        return scripts, next((name for name, active in listed if active), "")

    def write(self, new: ManageSieve, scripts: list[SieveScript], old_active: str) -> FilterReport:
        report = FilterReport(old_active=old_active)
        for script in scripts:
            answer = new.put_script(script.name, script.content)
            if answer.ok:
                report.copied.append(script.fields())
            else:
                code = f" [{answer.code}]" if answer.code else ""
                report.refused.append(script.refused(one_line(answer.text or "refused", MAX_REASON) + code))
        if old_active and any(s["name"] == old_active for s in report.copied):
            new.set_active(old_active)
            report.active = old_active
        return report

    def differences(self, source_name: str, login: str, password: str | None, target_login: str) -> list[str]:
        """The scripts of both servers compared by content hash, and which one is active; one line each."""
        try:
            with server_errors(f"{login}: ManageSieve"):
                try:
                    old, old_active = self.read(self.source_address,
                                                self.servers.copy_plan(source_name, login, password))
                except _NotOffered:
                    return []
                try:
                    new, new_active = self.read(self.target_address, self.target_plan(target_login))
                except _NotOffered:
                    return [f"sieve script {s.name!r}: the new server does not offer ManageSieve" for s in old]
        except PasswordRefused as e:
            raise MigrationRefused(str(e)) from None
        except MailServerError as e:
            raise MigrationRefused(f"{e}{' (try again)' if e.retryable else ''}") from None
        return filter_differences(old, old_active, new, new_active)


class _NotOffered(Exception):
    """Raised past `server_errors`, which would turn a refused connection into a server failure."""
