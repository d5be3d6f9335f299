"""Real Debian mail clients, run against a server the way a user's machine would run them.

:class:`Getmail` is getmail6 in POP3 "leave messages on server" mode (``read_all = false``,
``delete = false``): it remembers the UIDLs it has seen in its *oldmail* file and fetches only
the others.  :class:`Mbsync` is isync's mbsync keeping a local Maildir cache of every IMAP folder:
its sync state records each folder's UIDVALIDITY and the far side's UIDs.

Each driver owns a private directory (config, state, password file, local mail) under the
directory it is given, so several clients and runs never share state unless a test wants them to.
Passwords reach the programs through a 0600 file read by the program's own password command,
never through the command line or the environment.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imapclient import imap_utf7

from testbed import Tls

CLIENT_TIMEOUT = 120.0
_CLIENT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
# getmail replaces these characters by "-" in its oldmail file names.
_OLDMAIL_STRIP = r"[/\\:;<>|]+"
_GETMAIL_SUMMARY = re.compile(r"(\d+) messages? \(\d+ bytes?\) retrieved, (\d+) skipped")
# mbsync's native Maildir UID scheme puts the far side's UID into every file name (",U=<uid>").
_MBSYNC_UID = re.compile(r",U=(\d+)")
# mbsync marks every message it stores with a header holding its transaction id.
_X_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)
MAILDIR_INFO = ":2,"
_MAILDIR_DELIVERY = "import mailbox, sys; mailbox.Maildir(sys.argv[1]).add(sys.stdin.buffer.read())"


@dataclass(frozen=True)
class ServerEndpoint:
    """Where a client connects: host, port, how TLS starts there, and the CA file that signs the server."""

    host: str
    port: int
    tls: Tls = "none"
    ca_file: Path | None = None


@dataclass(frozen=True)
class ClientRun:
    """One run of a client program: its exit status and what it printed."""

    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout then stderr: the programs print notices on one and errors on the other."""
        return self.stdout + self.stderr

    def describe(self) -> str:
        """The command, exit status and output, for assertion messages."""
        return f"{' '.join(self.command)} exited {self.returncode}\n{self.output}"


@dataclass(frozen=True)
class GetmailRun(ClientRun):
    """A getmail run: *retrieved* is getmail's own summary count (None without a summary),
    *delivered* the number of files that appeared in the local Maildir."""

    retrieved: int | None = None
    delivered: int = 0


@dataclass(frozen=True)
class MbsyncRun(ClientRun):
    """An mbsync run: *downloaded* counts the message files new in each local folder."""

    downloaded: dict[str, int] | None = None

    @property
    def downloaded_total(self) -> int:
        """Message files new anywhere in the local store."""
        return sum((self.downloaded or {}).values())


def _write_secret(path: Path, secret: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(secret.encode())
    return path


def _run(command: list[str], home: Path) -> tuple[int, str, str]:
    result = subprocess.run(
        command, capture_output=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL,
        env={"HOME": str(home), "PATH": _CLIENT_PATH, "LANG": "C.UTF-8"},
    )
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


def _maildir_files(maildir: Path) -> list[Path]:
    return sorted(path for sub in ("new", "cur") if (maildir / sub).is_dir() for path in (maildir / sub).iterdir())


def _maildir_key(path: Path) -> str:
    """A message file's name without its flags, stable while flags change."""
    return path.name.split(MAILDIR_INFO, 1)[0]


class Getmail:
    """getmail6 fetching one POP3 account into a local Maildir, leaving the mail on the server."""

    def __init__(self, workdir: Path, endpoint: ServerEndpoint, login: str, password: str) -> None:
        if endpoint.tls == "starttls":
            raise ValueError("getmail's simple POP3 retrievers speak plain POP3 or POP3 over TLS, not STLS")
        self.endpoint = endpoint
        self.login = login
        self.workdir = workdir
        self.getmaildir = workdir / "getmail"
        self.maildir = workdir / "Maildir"
        self.rcfile = self.getmaildir / "getmailrc"
        self.password_file = _write_secret(workdir / "secrets" / "pop3-password", password)
        self.getmaildir.mkdir(parents=True, exist_ok=True)
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.rcfile.write_text(self._rc(), encoding="utf-8")

    def _rc(self) -> str:
        tls = self.endpoint.tls == "implicit"
        ca = f"ca_certs = {self.endpoint.ca_file}\n" if tls and self.endpoint.ca_file else ""
        return (
            "[retriever]\n"
            f"type = {'SimplePOP3SSLRetriever' if tls else 'SimplePOP3Retriever'}\n"
            f"server = {self.endpoint.host}\n"
            f"port = {self.endpoint.port}\n"
            f"username = {self.login}\n"
            f"password_command = {('/bin/cat', str(self.password_file))!r}\n"
            f"{ca}"
            "\n[destination]\n"
            # getmail's own Maildir writer refuses to run as root (the tests do), so an
            # external delivery agent writes the Maildir; retrieval and oldmail stay getmail's.
            "type = MDA_external\n"
            f"path = {sys.executable}\n"
            f"arguments = {('-c', _MAILDIR_DELIVERY, str(self.maildir))!r}\n"
            "allow_root_commands = true\n"
            "\n[options]\n"
            "verbose = 1\n"
            "read_all = false\n"
            "delete = false\n"
            # Keep delivered files byte-comparable with the server's messages.
            "delivered_to = false\n"
            "received = false\n"
        )

    def move_to(self, endpoint: ServerEndpoint) -> None:
        """Point this client at another address while keeping the UIDLs it has seen.

        Stands for a user whose server name now leads to another machine: getmail names its
        oldmail file after server, port and user name, so a changed address alone would make it
        start afresh and fetch everything again, whatever the server's UIDLs.
        """
        try:
            seen: Path | None = self.oldmail_file()
        except FileNotFoundError:
            seen = None
        self.endpoint = endpoint
        self.rcfile.write_text(self._rc(), encoding="utf-8")
        if seen is not None:
            name = f"oldmail-{endpoint.host}-{endpoint.port}-{self.login}"
            seen.rename(self.getmaildir / re.sub(_OLDMAIL_STRIP, "-", name))

    def command(self) -> list[str]:
        """The command line one fetch runs."""
        return ["getmail", "--rcfile", str(self.rcfile), "--getmaildir", str(self.getmaildir)]

    def fetch(self) -> GetmailRun:
        """Run getmail once; report what it says it retrieved and what arrived in the Maildir."""
        before = {path.name for path in self.delivered()}
        command = self.command()
        code, out, err = _run(command, self.workdir)
        summary = _GETMAIL_SUMMARY.search(out + err)
        delivered = len({path.name for path in self.delivered()} - before)
        return GetmailRun(
            tuple(command), code, out, err, retrieved=int(summary.group(1)) if summary else None, delivered=delivered,
        )

    def delivered(self) -> list[Path]:
        """Every message file in the local Maildir."""
        return _maildir_files(self.maildir)

    def delivered_messages(self) -> list[bytes]:
        """Every delivered message (LF line ends) without the Return-Path line getmail puts first."""
        return [_without_return_path(path.read_bytes()) for path in self.delivered()]

    def oldmail_file(self) -> Path:
        """getmail's record of seen UIDLs, named after server, port and user name."""
        matches = sorted(self.getmaildir.glob("oldmail-*"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one oldmail file in {self.getmaildir}, found {matches}")
        return matches[0]

    def seen_uidls(self) -> set[str]:
        """The UIDLs getmail will not fetch again (empty before the first successful run)."""
        try:
            text = self.oldmail_file().read_text()
        except FileNotFoundError:
            return set()
        return {line.split("\0", 1)[0] for line in text.splitlines() if "\0" in line}


def _without_return_path(raw: bytes) -> bytes:
    first, separator, rest = raw.partition(b"\n")
    return rest if separator and first.startswith(b"Return-Path:") else raw


MbsyncSync = Literal["All", "Pull"]
MbsyncExpunge = Literal["None", "Near", "Far", "Both"]


class Mbsync:
    """mbsync keeping a local Maildir copy of every folder of one IMAP account."""

    def __init__(
        self,
        workdir: Path,
        endpoint: ServerEndpoint,
        login: str,
        password: str,
        *,
        sync: MbsyncSync = "All",
        expunge: MbsyncExpunge = "Both",
    ) -> None:
        _check_mbsync_host(endpoint)
        self.endpoint = endpoint
        self.login = login
        self.workdir = workdir
        self.mail_root = workdir / "mail"
        self.inbox = self.mail_root / "INBOX"
        self.rcfile = workdir / "mbsyncrc"
        self.password_file = _write_secret(workdir / "secrets" / "imap-password", password)
        self.mail_root.mkdir(parents=True, exist_ok=True)
        self._sync_mode, self._expunge = sync, expunge
        self.rcfile.write_text(self._rc(), encoding="utf-8")

    def move_to(self, endpoint: ServerEndpoint) -> None:
        """Point this client at another address; its sync state lives in the local folders and stays."""
        _check_mbsync_host(endpoint)
        self.endpoint = endpoint
        self.rcfile.write_text(self._rc(), encoding="utf-8")

    def _rc(self) -> str:
        ssl_type = {"none": "None", "starttls": "STARTTLS", "implicit": "IMAPS"}[self.endpoint.tls]
        certificate = f"CertificateFile {self.endpoint.ca_file}\n" if self.endpoint.ca_file else ""
        return (
            "IMAPAccount account\n"
            f"Host {self.endpoint.host}\n"
            f"Port {self.endpoint.port}\n"
            f"User {_quoted(self.login)}\n"
            f"PassCmd {_quoted('cat ' + shlex.quote(str(self.password_file)))}\n"
            f"SSLType {ssl_type}\n"
            f"{certificate}"
            # Named, because mbsync's default "*" leaves out mechanisms that send the password
            # readably whenever the connection has no TLS.
            "AuthMechs PLAIN LOGIN\n"
            "\n"
            "IMAPStore far\n"
            "Account account\n"
            "\n"
            "MaildirStore near\n"
            f"Path {self.mail_root}/\n"
            f"Inbox {self.inbox}\n"
            "SubFolders Verbatim\n"
            "\n"
            "Channel mailbox\n"
            "Far :far:\n"
            "Near :near:\n"
            "Patterns *\n"
            "Create Near\n"
            f"Sync {self._sync_mode}\n"
            f"Expunge {self._expunge}\n"
            "CopyArrivalDate yes\n"
            "SyncState *\n"
        )

    def command(self) -> list[str]:
        """The command line one sync runs."""
        return ["mbsync", "-c", str(self.rcfile), "-a"]

    def sync(self) -> MbsyncRun:
        """Run mbsync once over every channel; count the message files each local folder gained."""
        before = self._message_keys()
        command = self.command()
        code, out, err = _run(command, self.workdir)
        after = self._message_keys()
        downloaded = {folder: len(keys - before.get(folder, set())) for folder, keys in after.items()}
        return MbsyncRun(tuple(command), code, out, err, downloaded={f: n for f, n in downloaded.items() if n})

    def local_folders(self) -> list[str]:
        """The canonical names (``/``-separated, UTF-8) of the local Maildir folders."""
        folders = []
        for cur in self.mail_root.rglob("cur"):
            relative = cur.parent.relative_to(self.mail_root)
            folders.append("/".join(imap_utf7.decode(part.encode()) for part in relative.parts))
        return sorted(folders)

    def folder_path(self, folder: str) -> Path:
        """The local Maildir of canonical *folder*."""
        if folder.upper() == "INBOX":
            return self.inbox
        return self.mail_root.joinpath(*(imap_utf7.encode(part).decode() for part in folder.split("/")))

    def local_messages(self, folder: str) -> list[Path]:
        """The message files of one local folder."""
        return _maildir_files(self.folder_path(folder))

    def local_contents(self, folder: str) -> list[bytes]:
        """The local messages of *folder* (LF line ends) without the X-TUID header mbsync adds to each."""
        return [_X_TUID.sub(b"", path.read_bytes(), count=1) for path in self.local_messages(folder)]

    def local_uids(self, folder: str) -> list[int]:
        """The server UIDs of the messages mbsync holds locally for *folder*, ascending."""
        return sorted(self.local_flags(folder))

    def local_flags(self, folder: str) -> dict[int, str]:
        """Maildir flag letters by server UID.

        ``S`` \\Seen, ``F`` \\Flagged, ``R`` \\Answered, ``D`` \\Draft, ``T`` \\Deleted, ``P`` $Forwarded;
        mbsync keeps no other keywords locally.
        """
        return {
            uid: path.name.partition(MAILDIR_INFO)[2]
            for path in self.local_messages(folder)
            if (uid := _server_uid(path)) is not None
        }

    def set_local_flag(self, folder: str, uid: int, letter: str) -> None:
        """Add Maildir flag *letter* to the local copy of message *uid*, as a mail reader would."""
        path = self._local_message(folder, uid)
        key, _, current = path.name.partition(MAILDIR_INFO)
        letters = "".join(sorted(set(current) | {letter}))
        path.rename(path.parent.parent / "cur" / f"{key}{MAILDIR_INFO}{letters}")

    def delete_local(self, folder: str, uid: int) -> None:
        """Delete the local copy of message *uid*; the next sync propagates the deletion to the server."""
        self._local_message(folder, uid).unlink()

    def _local_message(self, folder: str, uid: int) -> Path:
        for path in self.local_messages(folder):
            if _server_uid(path) == uid:
                return path
        raise FileNotFoundError(f"no local copy of UID {uid} in {folder!r}")

    def _message_keys(self) -> dict[str, set[str]]:
        return {folder: {_maildir_key(path) for path in self.local_messages(folder)} for folder in self.local_folders()}


def _server_uid(path: Path) -> int | None:
    found = _MBSYNC_UID.search(_maildir_key(path))
    return int(found.group(1)) if found is not None else None


def _quoted(value: str) -> str:
    """An mbsync config string: double-quoted, with backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_mbsync_host(endpoint: ServerEndpoint) -> None:
    if endpoint.tls == "none":
        return
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError:
        return
    raise ValueError(
        "mbsync checks only a certificate's DNS names: give a host name the certificate names, e.g. localhost"
    )
