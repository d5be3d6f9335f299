"""`serve` checks every file it needs before its first port opens: a bad one is one line and exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from multinode import free_port

SERVE = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())"]


def secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def config_text(tmp: Path, imap_port: int, admin_port: int) -> str:
    master = secret(tmp / "master.secret", "master-secret")
    from mailmigrator.ops.console.auth import write_password_file

    write_password_file(tmp / "admin.hash", "a good admin password")
    return f"""\
[store]
url = "sqlite:///{tmp / 'events.sqlite'}"

[source]
host = "127.0.0.1"
tls = "disable"

[target]
host = "127.0.0.1"
tls = "disable"
master_user = "mailmigrator"
master_password_file = "{master}"
passwd_file = "{tmp / 'users.passwd'}"

[proxy]
imap = ["127.0.0.1:{imap_port}"]

[migration]
primary_domain = "example.com"

[admin]
listen = ["127.0.0.1:{admin_port}"]
password_file = "{tmp / 'admin.hash'}"
"""


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def serve_until_it_stops(config: Path, case: str, before: Callable[[], None] | None = None) -> tuple[int, str]:
    """Run `serve` on `config` (calling `before` in the child first); its exit status and standard error."""
    with subprocess.Popen([*SERVE, "--config", str(config), "serve"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=before) as process:
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"serve kept running {case}:\n{err[-2000:]}")
    return process.returncode, err


def plain_admin_password(tmp: Path, text: str) -> str:
    secret(tmp / "admin.hash", "just-a-plain-password")
    return text


def garbage_certificate(tmp: Path, text: str) -> str:
    cert, key = tmp / "cert.pem", secret(tmp / "key.pem", "not a key\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return text.replace("[proxy]\n", f'[proxy]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')


def script_not_executable(tmp: Path, text: str) -> str:
    script = tmp / "after.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    return text.replace("[migration]\n", f'[migration]\npost_migrate_script = "{script}"\n')


def missing_ca_file(tmp: Path, text: str) -> str:
    return text.replace('[target]\nhost = "127.0.0.1"\n', f'[target]\nhost = "127.0.0.1"\nca_file = "{tmp / "absent-ca.pem"}"\n')


def log_file_in_missing_directory(tmp: Path, text: str) -> str:
    return text.replace("[migration]\n", f'[migration]\nlog_file = "{tmp / "no-such-dir" / "migration.log"}"\n')


def dovecot_engine_without_its_config(tmp: Path, text: str) -> str:
    return text.replace('[target]\nhost = "127.0.0.1"\n', '[target]\nhost = "127.0.0.1"\nengine = "dovecot"\n'
                        f'doveadm_config = "{tmp / "absent-dovecot.conf"}"\n')


def readable_master_secret(tmp: Path, text: str) -> str:
    (tmp / "master.secret").chmod(0o644)
    return text


@pytest.mark.parametrize(("spoil", "named"), [
    (plain_admin_password, "[admin] password_file"),
    (garbage_certificate, "[proxy] tls_cert"),
    (script_not_executable, "[migration] post_migrate_script"),
    (missing_ca_file, "[target] ca_file"),
    (log_file_in_missing_directory, "[migration] log_file"),
    (readable_master_secret, "[target] master_password_file"),
    (dovecot_engine_without_its_config, "[target] doveadm_config"),
])
def test_a_bad_file_stops_serve_before_any_port_opens(spoil: Callable[[Path, str], str], named: str,
                                                      tmp_path: Path) -> None:
    imap_port, admin_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = tmp_path / "mailmigrator.toml"
    config.write_text(spoil(tmp_path, config_text(tmp_path, imap_port, admin_port)))
    returncode, err = serve_until_it_stops(config, f"with a bad file ({named})")
    assert returncode == 2, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailmigrator: ") and named in lines[0], err[-3000:]
    assert "Traceback" not in err and "listening" not in err
    assert bindable(imap_port) and bindable(admin_port)


def _open_files_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_max_connections_beyond_the_open_files_limit_stops_serve_in_one_line(tmp_path: Path) -> None:
    imap_port, admin_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    config = tmp_path / "mailmigrator.toml"
    config.write_text(config_text(tmp_path, imap_port, admin_port).replace("[proxy]\n", "[proxy]\nmax_connections = 5000\n"))
    returncode, err = serve_until_it_stops(config, "beyond its open files limit", _open_files_limit(1024))
    assert returncode == 2, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailmigrator: [proxy] max_connections = 5000"), err[-3000:]
    assert "may open 1024" in lines[0] and "Traceback" not in err
    assert bindable(imap_port) and bindable(admin_port)
