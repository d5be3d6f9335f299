"""Private, throw-away Dovecot servers on loopback for tests, benchmarks and demos.

A :class:`DovecotServer` owns one Dovecot instance (config, ``base_dir``,
``state_dir``, log, passwd-files and Maildir root) inside a directory given by
the caller.  ``make_old_server`` builds the server mail is migrated *from*
(IMAP + POP3, STARTTLS/STLS and implicit TLS, optional admin master user);
``make_new_server`` builds the server mail is migrated *to* (IMAP, master user,
a passwd-file written by the service under test).

The module also seeds mailboxes through real IMAP and reads them back as
:class:`MailboxSnapshot` values for assertions.  Folder names in seeds and
snapshots are *canonical*: personal-namespace prefix removed and hierarchy
joined with ``/`` (``"Entwürfe/Ärger"``, ``"INBOX"``), so snapshots of servers
with different separators and prefixes compare directly.

Needs root (Dovecot's master process does) and the ``dovecot`` binaries.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import grp
import hashlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.header import Header
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

if TYPE_CHECKING:
    import trustme

MAIL_USER = "mailmigrator-test"
MASTER_SEPARATOR = "*"
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

Tls = Literal["none", "starttls", "implicit"]

# The new server lacks one Sieve extension the old one has: a script using it is refused there.
NEW_SERVER_SIEVE_EXTENSIONS = "-imap4flags"

_instance_numbers = itertools.count(1)
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Unix socket paths are limited to 108 bytes; Dovecot appends up to ~25.
_MAX_BASE_DIR_LEN = 80


class TestbedError(RuntimeError):
    """The Dovecot test bed could not be set up, started or used."""

    __test__ = False  # not a pytest test class despite the name


class MessageRecord(NamedTuple):
    """One stored message as seen over IMAP."""

    sha256: str
    flags: frozenset[str]
    internaldate: datetime


@dataclass
class MailboxSnapshot:
    """Everything a migration must preserve about one mailbox, keyed by canonical folder name."""

    folders: dict[str, list[MessageRecord]] = field(default_factory=dict)
    subscribed: set[str] = field(default_factory=set)
    special_use: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedMessage:
    """A message to append, with the flags/keywords and INTERNALDATE it should get."""

    raw: bytes
    internaldate: datetime
    flags: tuple[str, ...] = ()

    def record(self) -> MessageRecord:
        """The snapshot record this message should produce once stored."""
        return MessageRecord(hashlib.sha256(self.raw).hexdigest(), frozenset(self.flags), self.internaldate)


def password_hash(password: str) -> str:
    """Dovecot ``{SSHA512}`` hash of *password*, as used in passwd-file lines."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def ensure_mail_user(name: str = MAIL_USER) -> tuple[int, int]:
    """Create the unprivileged system user owning test mail if missing; return its (uid, gid)."""
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid
    if os.geteuid() != 0:
        raise TestbedError(f"system user {name!r} is missing and only root can create it")
    try:
        group_args = ["-g", name] if _group_exists(name) else ["-U"]
        subprocess.run(
            ["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *group_args, name],
            check=True, capture_output=True, text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        # A concurrent test session may have created it first.
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        detail = getattr(exc, "stderr", "") or exc
        raise TestbedError(f"cannot create system user {name!r}: {detail}") from exc
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _binary(name: str) -> str:
    return shutil.which(name, path=_SEARCH_PATH) or name


class _EarlyExit(Exception):
    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        if _process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _is_log_process(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0 ").endswith(b"/log")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class DovecotServer:
    """A private Dovecot instance listening on free ports of 127.0.0.1.

    Use as a context manager or call :meth:`start` / :meth:`stop`.  Mail
    processes chroot into the Maildir root, so *workdir* need not be
    traversable by the unprivileged mail user.  Dovecot logs a harmless
    ``chdir(/<login>) failed`` error for the first login of a user whose home
    does not exist yet (users added with :meth:`add_user` get one up front).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        name: str = "dovecot",
        ca: trustme.CA | None = None,
        pop3: bool = False,
        implicit_tls: bool = False,
        separator: str = "/",
        prefix: str = "",
        master_user: str | None = None,
        master_password: str | None = None,
        special_use_auto: Literal["no", "create", "subscribe"] = "subscribe",
        mail_user: str = MAIL_USER,
        sieve_extensions: str = "",
        submission_host: str = "",
    ) -> None:
        if prefix and not prefix.endswith(separator):
            raise ValueError(f"prefix {prefix!r} must end with the separator {separator!r}")
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.separator = separator
        self.prefix = prefix
        self.master_user = master_user
        self.master_password = (
            master_password if master_password is not None or master_user is None else secrets.token_urlsafe(12)
        )
        self.pop3 = pop3
        self.implicit_tls = implicit_tls
        self.special_use_auto = special_use_auto
        self.instance_name = f"mmtb-{name}-{os.getpid()}-{next(_instance_numbers)}"
        self.config_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.passwd_file = self.workdir / "users.passwd"
        self.master_passwd_file = self.workdir / "masters.passwd"
        self.mail_root = self.workdir / "mail"
        self.state_dir = self.workdir / "state"
        self.ca_pem = self.workdir / "ca.pem"
        self.imap_port: int | None = None
        self.imaps_port: int | None = None
        self.pop3_port: int | None = None
        self.pop3s_port: int | None = None
        self.managesieve_port: int | None = None
        # Pigeonhole's `sieve_extensions` (e.g. "-imap4flags": scripts using it are refused by PUTSCRIPT).
        self.sieve_extensions = sieve_extensions
        # Where Sieve sends vacation replies and redirects ("host:port"); empty: Dovecot's sendmail.
        self.submission_host = submission_host
        self._ca = ca
        self._mail_user = mail_user
        self._base_dir: Path | None = None
        self._own_base_dir = False
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 15.0) -> DovecotServer:
        """Write the configuration, start Dovecot and wait until every listener accepts connections."""
        if self._process is not None:
            return self
        for binary in ("dovecot", "doveadm"):
            if shutil.which(binary, path=_SEARCH_PATH) is None:
                raise TestbedError(
                    f"{binary!r} not found: install dovecot-imapd and dovecot-pop3d (Debian packages)"
                )
        if os.geteuid() != 0:
            raise TestbedError("the Dovecot test bed must run as root (Dovecot's master process needs it)")
        self._prepare_files()
        for attempt in range(5):
            self._assign_ports()
            self.config_path.write_text(self._render_config())
            console = self.workdir / "dovecot.console"
            # In the foreground (-F) the master stays our child, so we reap it: an
            # init that never reaps would otherwise keep a zombie "dovecot" around.
            with console.open("w") as out:
                self._process = subprocess.Popen(
                    [_binary("dovecot"), "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            atexit.register(self.stop)
            try:
                self._wait_ready(timeout)
                return self
            except _EarlyExit as exc:
                self.stop()
                if "Address already in use" in exc.output and attempt < 4:
                    continue
                raise TestbedError(f"dovecot ({self.name}) failed to start:\n{exc.output}") from None
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Dovecot with ``doveadm stop``, killing whatever outlives *timeout*; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        children = _children(process.pid)
        stopper = subprocess.Popen(
            [_binary("doveadm"), "-c", str(self.config_path), "stop"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
        # anvil otherwise lingers for seconds before the master may exit; the log
        # process is spared so that it still records everyone's last words.
        _signal_all((pid for pid in children if not _is_log_process(pid)), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, timeout - (time.monotonic() - started)))
        if process.poll() is None:
            process.kill()
        process.wait()
        _signal_all(children, signal.SIGKILL)
        # doveadm stop polls for the master's exit only about once a second; its job is done.
        if stopper.poll() is None:
            stopper.kill()
        stopper.wait()
        if self._own_base_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The Dovecot master process id while running, else None."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- users and administration -----------------------------------------

    def add_user(self, login: str, password: str) -> None:
        """Add or replace *login* in the passwd-file and wait until Dovecot accepts the password."""
        self.add_users({login: password})

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add or replace several logins with one passwd-file rewrite, then wait until Dovecot sees them."""
        for login, password in users.items():
            if not login or ":" in login or "\n" in login or "\n" in password:
                raise ValueError(f"login {login!r} cannot be stored in a passwd-file")
        current = self.passwd_file.read_text().splitlines(keepends=True) if self.passwd_file.exists() else []
        known = {line.split(":", 1)[0] for line in current}
        lines = [line for line in current if line.split(":", 1)[0] not in users]
        lines += [f"{login}:{password_hash(password)}::::::\n" for login, password in users.items()]
        written_at = time.time()
        self._replace_file(self.passwd_file, "".join(lines))
        uid, gid = ensure_mail_user(self._mail_user)
        for login in users:
            # A missing home makes the chrooted mail process log an error on first login.
            home = self.mail_root / login.lower()
            if not home.exists():
                home.mkdir(mode=0o700)
                os.chown(home, uid, gid)
        if self._process is None or not users:
            return
        fresh = [login for login in users if login not in known]
        if fresh:
            self.wait_for_user(fresh[0])
        else:
            # Only password changes: nothing to poll for, so outwait the once-a-second stat.
            time.sleep(max(0.0, int(written_at) + 1.05 - time.time()))

    def wait_for_user(self, login: str, timeout: float = 5.0) -> None:
        """Block until Dovecot's auth process finds *login* in its passdb.

        Dovecot stats a passwd-file at most once per second, so a user added
        right after another lookup stays unknown for up to a second.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [_binary("doveadm"), "-c", str(self.config_path), "auth", "lookup", login],
                capture_output=True, text=True,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.name}: Dovecot still does not know {login!r} after {timeout:.0f}s")
            time.sleep(0.1)

    def doveadm(self, *args: str, check: bool = True) -> str:
        """Run ``doveadm -c CONF ARGS...`` against this instance and return its stdout."""
        result = subprocess.run(
            [_binary("doveadm"), "-c", str(self.config_path), *args], capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise TestbedError(f"doveadm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        """The last *lines* lines of the Dovecot log ('' before the first start)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    # -- clients -----------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def imap(self, login: str, password: str | None = None, *, tls: Tls = "none") -> IMAPClient:
        """An IMAPClient logged in as *login*, through the master user when *password* is None."""
        port = self.imaps_port if tls == "implicit" else self.imap_port
        if port is None:
            raise TestbedError(f"{self.name} has no listener for tls={tls!r}")
        login, password = self._credentials(login, password)
        return open_imap(self.host, port, login, password, tls=tls, ssl_context=self.ssl_context())

    def snapshot(self, login: str, password: str | None = None) -> MailboxSnapshot:
        """The :func:`mailbox_snapshot` of *login*, through the master user when *password* is None."""
        with self.imap(login, password) as client:
            return snapshot_client(client)

    def _credentials(self, login: str, password: str | None) -> tuple[str, str]:
        if password is not None:
            return login, password
        if self.master_user is None or self.master_password is None:
            raise TestbedError(f"{self.name} has no master user; pass the user's password")
        return f"{login}{MASTER_SEPARATOR}{self.master_user}", self.master_password

    # -- internals ---------------------------------------------------------

    def _prepare_files(self) -> None:
        uid, gid = ensure_mail_user(self._mail_user)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        (self.mail_root / ".tmp").mkdir(exist_ok=True)
        for path in (self.mail_root, self.mail_root / ".tmp"):
            os.chown(path, uid, gid)
            path.chmod(0o700)
        base_dir = self.workdir / "run"
        if len(str(base_dir)) > _MAX_BASE_DIR_LEN:
            base_dir = Path(tempfile.mkdtemp(prefix="mmtb-"))
            base_dir.chmod(0o755)
            self._own_base_dir = True
        self._base_dir = base_dir
        if not self.passwd_file.exists():
            self._replace_file(self.passwd_file, "")
        masters = ""
        if self.master_user is not None and self.master_password is not None:
            masters = f"{self.master_user}:{password_hash(self.master_password)}\n"
        self._replace_file(self.master_passwd_file, masters)
        self._write_certificates()

    def _write_certificates(self) -> None:
        import trustme  # test-only dependency, so imported only when a server is started

        if self._ca is None:
            self._ca = trustme.CA()
        leaf = self._ca.issue_cert("localhost", "127.0.0.1")
        self._ca.cert_pem.write_to_path(str(self.ca_pem))
        cert_path, key_path = self.workdir / "server-cert.pem", self.workdir / "server-key.pem"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key_path.touch(mode=0o600)
        leaf.private_key_pem.write_to_path(str(key_path))

    @staticmethod
    def _replace_file(path: Path, text: str) -> None:
        # Dovecot notices passwd-file changes by mtime (whole seconds) and size,
        # so a same-size rewrite within one second must still move the mtime.
        old_mtime = path.stat().st_mtime if path.exists() else 0.0
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(text)
        tmp.chmod(0o600)
        mtime = max(time.time(), int(old_mtime) + 1)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)

    def _assign_ports(self) -> None:
        self.imap_port = _free_port(self.host)
        self.imaps_port = _free_port(self.host) if self.implicit_tls else None
        self.pop3_port = _free_port(self.host) if self.pop3 else None
        self.pop3s_port = _free_port(self.host) if self.pop3 and self.implicit_tls else None
        self.managesieve_port = _free_port(self.host)

    def _render_config(self) -> str:
        uid, gid = ensure_mail_user(self._mail_user)
        assert self._base_dir is not None
        protocols = ("imap pop3" if self.pop3 else "imap") + " sieve"
        dh = "ssl_dh = </usr/share/dovecot/dh.pem\n" if Path("/usr/share/dovecot/dh.pem").exists() else ""
        mailboxes = "".join(
            f"  mailbox {folder} {{\n    special_use = {flag}\n    auto = {self.special_use_auto}\n  }}\n"
            for folder, flag in SPECIAL_USE.items()
        )
        services = _service("imap-login", [("imap", self.imap_port, False), ("imaps", self.imaps_port, True)])
        if self.pop3:
            services += _service("pop3-login", [("pop3", self.pop3_port, False), ("pop3s", self.pop3s_port, True)])
        services += _service("managesieve-login", [("sieve", self.managesieve_port, False)])
        extensions = f"  sieve_extensions = {self.sieve_extensions}\n" if self.sieve_extensions else ""
        submission = f"submission_host = {self.submission_host}\n" if self.submission_host else ""
        return f"""# Generated by testbed for {self.name!r}; do not edit.
protocols = {protocols}
listen = {self.host}
base_dir = {self._base_dir}
instance_name = {self.instance_name}
state_dir = {self.state_dir}
log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
stats_writer_socket_path =

ssl = yes
ssl_cert = <{self.workdir / "server-cert.pem"}
ssl_key = <{self.workdir / "server-key.pem"}
ssl_min_protocol = TLSv1.2
{dh}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
# Empty: any user name, UTF-8 local parts included (Dovecot's default allows only [A-Za-z0-9.-_@]).
auth_username_chars =
auth_verbose = yes
auth_failure_delay = 0
auth_master_user_separator = {MASTER_SEPARATOR}

first_valid_uid = {uid}
first_valid_gid = {gid}
valid_chroot_dirs = {self.mail_root}
mail_chroot = {self.mail_root}
mail_location = maildir:~/Maildir
mail_temp_dir = /.tmp
mail_fsync = never
mail_max_userip_connections = 100
default_process_limit = 200
default_client_limit = 1000

# Auth reads the passwd-files as root, so they may live in a directory only root can traverse.
service auth {{
  user = root
}}
# Without this socket auth disables its per-IP penalty, which would delay logins
# from 127.0.0.1 by seconds after any failed attempt.
service anvil {{
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-disabled
  }}
}}
{services}
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = {self.master_passwd_file}
}}
passdb {{
  driver = passwd-file
  args = {self.passwd_file}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home=/%u
}}

namespace inbox {{
  inbox = yes
  separator = {self.separator}
  prefix = {self.prefix}
{mailboxes}}}

# Sieve (Pigeonhole): scripts in the home, managed over ManageSieve, run at delivery (LDA, LMTP) only.
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
{extensions}}}
protocol lda {{
  mail_plugins = $mail_plugins sieve
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
postmaster_address = postmaster@example.com
{submission}"""

    def _greets(self, port: int) -> bool:
        # A bare connect is not enough: someone else may own a port Dovecot failed to bind.
        try:
            with socket.create_connection((self.host, port), timeout=1) as sock:
                if port in (self.imaps_port, self.pop3s_port):
                    with self.ssl_context().wrap_socket(sock, server_hostname=self.host) as tls:
                        return tls.recv(64).startswith((b"* OK", b"+OK"))
                return sock.recv(64).startswith((b"* OK", b"+OK", b'"IMPLEMENTATION"'))
        except OSError:
            return False

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        pending = [p for p in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port,
                               self.managesieve_port) if p]
        while pending:
            if self._process.poll() is not None:
                console = (self.workdir / "dovecot.console").read_text(errors="replace")
                raise _EarlyExit(console + self.log_tail())
            if self._greets(pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"dovecot ({self.name}) did not accept connections on {self.host}:{pending[0]} "
                    f"within {timeout:.0f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)


def _service(name: str, listeners: Sequence[tuple[str, int | None, bool]]) -> str:
    body = "".join(
        f"  inet_listener {listener} {{\n    port = {port or 0}\n    ssl = {'yes' if tls else 'no'}\n  }}\n"
        for listener, port, tls in listeners
    )
    return f"service {name} {{\n{body}}}\n"


def make_old_server(
    workdir: str | os.PathLike[str],
    ca: trustme.CA | None = None,
    *,
    separator: str = ".",
    prefix: str = "INBOX.",
    admin_user: str | None = "admin",
    admin_password: str | None = None,
) -> DovecotServer:
    """An unstarted source server: IMAP/IMAPS, POP3/POP3S, STARTTLS/STLS, optional ``user*admin`` master login."""
    return DovecotServer(
        workdir, name="old", ca=ca, pop3=True, implicit_tls=True, separator=separator, prefix=prefix,
        master_user=admin_user, master_password=admin_password,
    )


def make_new_server(
    workdir: str | os.PathLike[str],
    ca: trustme.CA | None = None,
    *,
    separator: str = "/",
    prefix: str = "",
    master_user: str = "master",
    master_password: str | None = None,
    pop3: bool = False,
    sieve_extensions: str = NEW_SERVER_SIEVE_EXTENSIONS,
    submission_host: str = "",
) -> DovecotServer:
    """An unstarted target server: IMAP with STARTTLS (and POP3 if asked), ``user*master`` login, service-written
    passwd-file; ManageSieve without the Sieve extension `imap4flags`, so a script using it is refused."""
    return DovecotServer(
        workdir, name="new", ca=ca, separator=separator, prefix=prefix, pop3=pop3,
        master_user=master_user, master_password=master_password, sieve_extensions=sieve_extensions,
        submission_host=submission_host,
    )


# -- IMAP clients, seeding and snapshots ------------------------------------


def open_imap(
    host: str,
    port: int,
    login: str,
    password: str,
    *,
    tls: Tls = "none",
    ssl_context: ssl.SSLContext | None = None,
    master: str | None = None,
    timeout: float = 30.0,
) -> IMAPClient:
    """A logged-in IMAPClient; with *master*, logs in as ``login*master`` using the master's *password*."""
    client = IMAPClient(host, port, ssl=tls == "implicit", ssl_context=ssl_context, timeout=timeout)
    try:
        if tls == "starttls":
            client.starttls(ssl_context)
        # AUTHENTICATE PLAIN (RFC 4616) carries UTF-8 names and passwords; imaplib's LOGIN sends only ASCII.
        client.plain_login(f"{login}{MASTER_SEPARATOR}{master}" if master else login, password)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    client.normalise_times = False
    return client


class _Namespace(NamedTuple):
    prefix: str
    separator: str

    def server_name(self, canonical: str) -> str:
        if canonical.upper() == "INBOX":
            return "INBOX"
        return self.prefix + canonical.replace("/", self.separator)

    def canonical(self, name: str) -> str:
        if name.upper() == "INBOX":
            return "INBOX"
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix):]
        return name.replace(self.separator, "/")


def _namespace(client: IMAPClient) -> _Namespace:
    prefix, separator = client.namespace().personal[0]
    return _Namespace(_text(prefix), _text(separator))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def create_folder(client: IMAPClient, folder: str, *, subscribe: bool = True) -> None:
    """Create canonical *folder* (and its parents) unless it exists; subscribe it if asked."""
    ns = _namespace(client)
    parts = folder.split("/")
    for depth in range(1, len(parts) + 1):
        name = ns.server_name("/".join(parts[:depth]))
        try:
            client.create_folder(name)
        except IMAPClientError as exc:
            if "ALREADYEXISTS" not in str(exc):
                raise
    if subscribe:
        client.subscribe_folder(ns.server_name(folder))


def append_messages(client: IMAPClient, folder: str, messages: Iterable[SeedMessage]) -> list[MessageRecord]:
    """APPEND *messages* to canonical *folder* one by one; return the records a snapshot should show."""
    name = _namespace(client).server_name(folder)
    records = []
    for message in messages:
        client.append(name, message.raw, flags=message.flags, msg_time=message.internaldate)
        records.append(message.record())
    return records


def snapshot_client(client: IMAPClient) -> MailboxSnapshot:
    """Read every selectable folder, subscription and special-use flag of a logged-in client."""
    ns = _namespace(client)
    snapshot = MailboxSnapshot()
    for flags, _, name in client.list_folders():
        flags = {_text(flag) for flag in flags}
        canonical = ns.canonical(name)
        snapshot.special_use.update((flag, canonical) for flag in flags & set(SPECIAL_USE.values()))
        if {"\\Noselect", "\\NonExistent"} & flags:
            continue
        snapshot.folders[canonical] = _folder_records(client, name)
    snapshot.subscribed = {ns.canonical(name) for _, _, name in client.list_sub_folders()}
    return snapshot


def _folder_records(client: IMAPClient, name: str) -> list[MessageRecord]:
    client.select_folder(name, readonly=True)
    uids = client.search("ALL")
    records = []
    for start in range(0, len(uids), 500):
        fetched = client.fetch(uids[start:start + 500], ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
        for uid in sorted(fetched):
            data = fetched[uid]
            flags = frozenset(_text(flag) for flag in data[b"FLAGS"]) - {"\\Recent"}
            digest = hashlib.sha256(data[b"BODY[]"]).hexdigest()
            records.append(MessageRecord(digest, flags, data[b"INTERNALDATE"]))
    client.unselect_folder()
    return records


def mailbox_snapshot(
    host: str,
    port: int,
    login: str,
    password: str,
    *,
    tls: Tls = "none",
    ssl_context: ssl.SSLContext | None = None,
    master: str | None = None,
) -> MailboxSnapshot:
    """Log in (as ``login*master`` when *master* is given) and snapshot the whole mailbox."""
    with open_imap(host, port, login, password, tls=tls, ssl_context=ssl_context, master=master) as client:
        return snapshot_client(client)


def make_message(
    seed: int | str,
    *,
    subject: str | None = None,
    sender: str = "Alice Example <alice@example.com>",
    to: Sequence[str] = ("bob@example.com",),
    cc: Sequence[str] = (),
    date: datetime | None = None,
    message_id: bool | str = True,
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    size: int | None = None,
) -> bytes:
    """A deterministic RFC 5322 message (CRLF line ends) derived from *seed*.

    *message_id* True derives a Message-ID from the seed, False omits the
    header, a string is used verbatim.  *size* pads the body to exactly that
    many bytes.  Non-ASCII subjects are RFC 2047 encoded; non-ASCII bodies
    are sent as 8bit UTF-8.
    """
    digest = hashlib.sha256(str(seed).encode()).hexdigest()
    if date is None:
        date = datetime(2021, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=int(digest[:8], 16) % 1_000_000)
    subject = f"Test message {seed}" if subject is None else subject
    encoded_subject = subject if subject.isascii() else Header(subject, "utf-8").encode()
    body = f"Hello,\r\n\r\nthis is test message {seed} ({digest[:12]}).\r\n" if body is None else body
    lines = [
        ("From", sender),
        ("To", ", ".join(to)),
        *([("Cc", ", ".join(cc))] if cc else []),
        ("Subject", encoded_subject),
        ("Date", date.strftime("%a, %d %b %Y %H:%M:%S %z")),
    ]
    if message_id:
        generated = f"<{digest[:24]}@testbed.example>"
        lines.append(("Message-ID", message_id if isinstance(message_id, str) else generated))
    lines += [("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8")]
    lines.append(("Content-Transfer-Encoding", "7bit" if body.isascii() else "8bit"))
    lines += list((headers or {}).items())
    raw = "".join(f"{name}: {value}\r\n" for name, value in lines).encode() + b"\r\n"
    body = body.replace("\r\n", "\n").replace("\n", "\r\n")
    raw += (body if body.endswith("\r\n") else body + "\r\n").encode()
    if size is not None:
        missing = size - len(raw)
        if missing < 0:
            raise ValueError(f"message {seed!r} needs at least {len(raw)} bytes, {size} requested")
        if missing == 1:
            raw = raw[:-2] + b"." + raw[-2:]
        filler = (digest * 2).encode()
        while missing > 1:
            line = min(missing, 78)
            if missing - line == 1:
                line -= 1
            raw += filler[: line - 2] + b"\r\n"
            missing -= line
    return raw


def seed_bulk(
    server: DovecotServer,
    login: str,
    folder: str,
    messages: Iterable[bytes | SeedMessage],
    *,
    password: str | None = None,
    batch_size: int = 200,
) -> int:
    """MULTIAPPEND *messages* to canonical *folder* in batches and return how many were stored.

    Logs in through the master user when *password* is None; creates and subscribes *folder* if needed.
    """
    count = 0
    with server.imap(login, password) as client:
        create_folder(client, folder)
        name = _namespace(client).server_name(folder)
        for batch in _batches(messages, batch_size):
            client.multiappend(name, [
                message if isinstance(message, bytes)
                else {"msg": message.raw, "flags": message.flags, "date": message.internaldate}
                for message in batch
            ])
            count += len(batch)
    return count


def _batches(items: Iterable[bytes | SeedMessage], size: int) -> Iterator[list[bytes | SeedMessage]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _standard_content() -> dict[str, list[SeedMessage]]:
    def at(day: int, hour: int, offset_hours: int = 0) -> datetime:
        return datetime(2023, 3, day, hour, 15, 30, tzinfo=timezone(timedelta(hours=offset_hours)))

    def msg(seed: str, when: datetime, *flags: str, **kwargs: object) -> SeedMessage:
        return SeedMessage(make_message(seed, date=when, **kwargs), when, flags)  # type: ignore[arg-type]

    return {
        "INBOX": [
            msg("inbox-plain", at(1, 9)),
            msg("inbox-seen", at(2, 10, 2), "\\Seen"),
            msg("inbox-answered", at(3, 11, -5), "\\Seen", "\\Answered"),
            msg("inbox-flagged", at(4, 12), "\\Flagged"),
            msg("inbox-forwarded", at(5, 13, 1), "\\Seen", "$Forwarded"),
            msg("inbox-no-id", at(6, 14), "\\Seen", message_id=False),
            msg("inbox-umlaut", at(7, 15, 1), subject="Grüße aus Köln", body="Schöne Grüße!\r\n"),
            msg("inbox-large", at(8, 16), "\\Seen", size=96 * 1024, cc=("carol@example.com", "dave@example.com")),
            msg("inbox-keyword", at(9, 17), "$Label1", "Custom_Keyword", headers={"X-Priority": "1"}),
        ],
        "Sent": [msg("sent-1", at(10, 8), "\\Seen"), msg("sent-2", at(11, 9), "\\Seen", "$Forwarded")],
        "Drafts": [msg("draft-1", at(12, 10), "\\Draft", "\\Seen", to=())],
        "Trash": [msg("trash-1", at(13, 11), "\\Seen")],
        "Junk": [],
        "Archive": [],
        "Archive/2022": [msg("archive-2022", at(14, 12), "\\Seen")],
        "Entwürfe": [],
        "Entwürfe/Ärger": [msg("aerger", at(15, 13, 1), "\\Draft", subject="Ärger mit Umlauten")],
        "Projekte": [msg("projekte", at(16, 14))],
        "Projekte/Alpha/Tief": [msg("deep", at(17, 15), "\\Flagged", "\\Seen")],
        "Projekte/Alpha": [],
        "Leer": [],
    }


def seed_standard_mailbox(server: DovecotServer, login: str, password: str | None = None) -> MailboxSnapshot:
    """Build a representative mailbox for *login* and return the snapshot it should produce.

    Covers special-use folders, nested and non-ASCII folders, empty folders,
    an unsubscribed folder ("Leer"), system flags, keywords, a message without
    Message-ID, an 8bit message and one of 96 KiB, with varied INTERNALDATEs.
    Uses the master user when *password* is None.
    """
    content = _standard_content()
    expected = MailboxSnapshot(special_use={flag: folder for folder, flag in SPECIAL_USE.items()})
    with server.imap(login, password) as client:
        for folder, messages in content.items():
            subscribe = folder != "Leer"
            create_folder(client, folder, subscribe=subscribe)
            if subscribe:
                expected.subscribed.add(folder)
            expected.folders[folder] = append_messages(client, folder, messages)
    return expected
