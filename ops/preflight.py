"""What `serve` checks before its first port opens: every secret file, key, certificate and path it will need.

A file that is wrong when the service first reaches for it (a console password,
a certificate, a script) would otherwise fail with the proxy already listening,
or hours later on the first migrated account. Each check raises `ConfigError`
with one line naming the key and what to do.
"""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

from mailmigrator.adapters.dovecot.doveadm import DEFAULT_DOVEADM_CONFIG, find_doveadm
from mailmigrator.adapters.store.event_store import read_key_file
from mailmigrator.ops.config import Config, ConfigError, SourceConfig, TargetConfig, read_secret_file


def copy_engine_choice(target: TargetConfig, source: SourceConfig | None) -> str:
    """"dovecot" or "imap" as `[target] engine` says; "auto" is dovecot when doveadm_config is set, doveadm is
    on PATH and the old server speaks IMAP. `ConfigError` when the Dovecot engine is chosen but cannot run."""
    doveadm = find_doveadm()
    pop3_only = source is not None and source.protocol == "pop3"
    if target.engine == "imap" or (target.engine == "auto"
                                   and (target.doveadm_config is None or doveadm is None or pop3_only)):
        return "imap"
    if pop3_only:
        raise ConfigError('[target] engine = "dovecot" pulls over IMAP; [source] protocol = "pop3" needs '
                          'engine = "imap"')
    if doveadm is None:
        raise ConfigError('[target] engine = "dovecot" needs doveadm on PATH (Debian: dovecot-core) on the new '
                          'server\'s host; install it there or set engine = "imap"')
    config = target.doveadm_config or DEFAULT_DOVEADM_CONFIG
    if not os.access(config, os.R_OK) or not config.is_file():
        raise ConfigError(f"[target] doveadm_config {config} cannot be read by this user; name the new Dovecot's "
                          "config file (doveadm -c)")
    return "dovecot"


def check_before_listening(config: Config) -> None:
    """Raise `ConfigError` for the first configured file `serve` could not use."""
    store, source, target, proxy, m, admin = (config.store, config.source, config.target, config.proxy,
                                               config.migration, config.admin)
    if store.encryption_key_file is not None:
        read_key_file(store.encryption_key_file)
    if source is not None:
        if source.admin_user:
            read_secret_file(source.admin_password_file, "[source] admin_password_file")
        _ca_file(source.ca_file, "[source] ca_file")
    if target is not None:
        if target.master_password_file is not None:
            read_secret_file(target.master_password_file, "[target] master_password_file")
        _ca_file(target.ca_file, "[target] ca_file")
        if target.provisioning == "passwd-file" and target.passwd_file is not None:
            _writable_directory(target.passwd_file, "[target] passwd_file")
        if target.alias_map is not None:
            _writable_directory(target.alias_map, "[target] alias_map")
        if target.transport_map is not None:
            _writable_directory(target.transport_map, "[target] transport_map")
        if target.postmap and shutil.which(target.postmap) is None:
            raise ConfigError(f"[target] postmap {target.postmap!r} is not an executable program on PATH; "
                              "name it as postmap or /usr/sbin/postmap (Debian: postfix)")
        copy_engine_choice(target, source)
    _certificate(proxy.tls_cert, proxy.tls_key, "[proxy]")
    _certificate(admin.tls_cert, admin.tls_key, "[admin]")
    if admin.password_file is not None and admin.listen:
        from mailmigrator.ops.console.auth import AdminPassword

        AdminPassword.from_file(admin.password_file)
    if m.post_migrate_script is not None:
        script = m.post_migrate_script
        if not script.is_file() or not os.access(script, os.X_OK):
            raise ConfigError(f"[migration] post_migrate_script {script} is not an executable file; "
                              f"chmod +x it or fix the path")
    if m.log_file is not None:
        _writable_directory(m.log_file, "[migration] log_file")


def _ca_file(path: Path | None, where: str) -> None:
    if path is None:
        return
    try:
        ssl.create_default_context(cafile=str(path))
    except OSError as e:
        raise ConfigError(f"{where} {path}: {e.strerror or e}") from None
    except ssl.SSLError:
        raise ConfigError(f"{where} {path} holds no PEM certificate") from None


def _certificate(cert: Path | None, key: Path | None, section: str) -> None:
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise ConfigError(f"{section} tls_cert and tls_key go together; set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except OSError as e:
        raise ConfigError(f"{section} tls_cert {cert} / tls_key {key}: {e.strerror or e}") from None
    except ssl.SSLError:
        raise ConfigError(f"{section} tls_cert {cert} and tls_key {key} are not a PEM certificate chain "
                          f"and its private key") from None


def _writable_directory(path: Path, where: str) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"{where} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{where} {path} cannot be written by this user; fix its permissions")
