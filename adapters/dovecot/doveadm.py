"""One dsync run of doveadm for one account: its private config file, its command line, and what its exit means.

The old server's login (password included) goes into a config file of mode
0600 in a directory of mode 0700 that `!include`s the new Dovecot's own
config; the password itself sits in a file beside it, read by Dovecot as
``imapc_password = <file`` (its content taken verbatim: no quoting, no ``%``
or ``$`` expansion). doveadm gets only ``-c FILE``: no secret is ever in a
process argument or in the environment. Both files are removed after the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from mailmigrator.adapters.imap.responses import one_line
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress

# doveadm's exit codes (sysexits.h): 2 is dsync's "changes happened meanwhile, run again".
EXIT_RUN_AGAIN = 2
EXIT_UNAVAILABLE = 69
EXIT_TEMPORARY = 75
# Replies worth a later retry: the old or the new server could not answer now.
RETRYABLE_EXITS = frozenset({EXIT_TEMPORARY})
# What doveadm reads without -c.
DEFAULT_DOVEADM_CONFIG = Path("/etc/dovecot/dovecot.conf")
# imapc reads sizes from RFC822.SIZE and headers without the body where it can (as dsync's own guide does).
IMAPC_FEATURES = "rfc822.size fetch-headers"
MAIL_PREFETCH_COUNT = 20
# The private config directories are named after the process that owns them, so that a later run can
# remove those a killed process left behind (they hold the old server's password).
PRIVATE_PREFIX = "mailmigrator-dsync-"
# How long a run waits for another run on the same user (one a killed node left running) to finish.
DSYNC_LOCK_SECONDS = 600


@dataclass(frozen=True)
class ImapcLogin:
    """How the new Dovecot's imapc storage reaches the old server for one account."""

    address: ServerAddress
    plan: LoginPlan = field(repr=False)
    # The old server's personal namespace prefix without its separator ("INBOX" for "INBOX."): listed folders
    # below it appear at the top level on the new side, as the copy plan maps them.
    list_prefix: str = ""

    def settings(self, password_file: Path) -> list[str]:
        """The imapc_* lines of the private config, the password read from `password_file`."""
        ssl = {"direct": "imaps", "disable": "no"}.get(self.address.tls, "starttls")
        lines = [
            f"imapc_host = {self.address.host}",
            f"imapc_port = {self.address.port}",
            f"imapc_ssl = {ssl}",
            f"imapc_ssl_verify = {'yes' if self.address.verify_certificate else 'no'}",
            f"imapc_features = {IMAPC_FEATURES}",
            f"imapc_password = <{password_file}",
            # Fetch ahead over the one imapc connection instead of one message per round trip.
            f"mail_prefetch_count = {MAIL_PREFETCH_COUNT}",
        ]
        if self.plan.admin_login == "sasl":
            lines += [f"imapc_user = {_literal(self.plan.user)}",
                      f"imapc_master_user = {_literal(self.plan.credentials.login)}"]
        else:
            lines.append(f"imapc_user = {_literal(self.plan.identities()[0])}")
        if self.list_prefix:
            lines.append(f"imapc_list_prefix = {_literal(self.list_prefix)}")
        if self.address.ca_file is not None:
            lines.append(f"ssl_client_ca_file = {self.address.ca_file}")
        return lines


def _literal(value: str) -> str:
    """A config value taken as written: Dovecot expands %variables in imapc_user."""
    if any(c in value for c in "\r\n"):
        raise ValueError("a login name with a line break cannot be written to a Dovecot config")
    return '"' + value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def private_config(doveadm_config: Path | None, login: ImapcLogin) -> Iterator[Path]:
    """A config file that includes `doveadm_config` (doveadm's default when None) and adds `login`'s imapc_* lines."""
    base = doveadm_config or DEFAULT_DOVEADM_CONFIG
    remove_abandoned_configs(Path(tempfile.gettempdir()))
    directory = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-"))  # mode 0700
    try:
        password = directory / "imapc.password"
        _write_private(password, login.plan.credentials.password)
        config = directory / "dsync.conf"
        _write_private(config, "\n".join([f"!include {base.absolute()}", *login.settings(password)]) + "\n")
        yield config
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_abandoned_configs(parent: Path) -> list[Path]:
    """Remove the private configs (and the passwords in them) of processes that died without cleaning up."""
    removed = []
    for directory in parent.glob(f"{PRIVATE_PREFIX}*-*"):
        owner = directory.name.removeprefix(PRIVATE_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def dsync_command(doveadm: str, config: Path, target_login: str, exclude: Sequence[str] = ()) -> list[str]:
    """The doveadm command line: a one-way pull (`sync -1 -R`) from the old server into `target_login`'s mailbox.

    One-way sync keeps what only the new side has (mail delivered there after the MX switch) and, into a folder
    that is new or still empty on the new side, writes the old UIDVALIDITY and UIDs. `backup -R` is never used:
    it makes the new side equal to the old (removing the new side's own mail), and with Dovecot 2.3 it fails
    outright once the new INBOX exists with a UIDVALIDITY of its own ("INBOX can't be deleted"), which it does
    as soon as anyone (the master login included) has opened it.
    """
    excluded = [arg for name in exclude for arg in ("-x", name)]
    # -l: a run left behind by a killed node finishes before this one starts on the same user.
    return [doveadm, "-c", str(config), "sync", "-1", "-R", "-l", str(DSYNC_LOCK_SECONDS), *excluded,
            "-u", target_login, "imapc:"]


def failure_line(stderr: str, secret: str) -> str:
    """The last Error/Fatal line of doveadm's stderr, one line, with `secret` never in it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": Error:" in line or ": Fatal:" in line or "Panic" in line]
    text = (errors or lines or ["no output"])[-1]
    if secret:
        text = text.replace(secret, "***")
    return one_line(text, 300)


async def run_doveadm(command: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run `command`; its exit status (-1 after `timeout` seconds, the process killed) and stderr."""
    with trio.move_on_after(timeout) as scope:
        try:
            done = await trio.run_process(list(command), capture_stdout=True, capture_stderr=True, check=False,
                                          stdin=subprocess.DEVNULL)
        except OSError as e:
            return EXIT_UNAVAILABLE, f"doveadm: Error: cannot run {command[0]}: {e.strerror or type(e).__name__}"
        return done.returncode, done.stderr.decode("utf-8", "replace")
    assert scope.cancelled_caught
    return -1, f"doveadm: Error: no answer within {timeout:.0f} s"


def find_doveadm(name: str = "doveadm") -> str | None:
    """doveadm's path on PATH, or None."""
    return shutil.which(name)
