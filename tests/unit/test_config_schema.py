"""The config schema: every bad value is one line naming its key; absent keys take the documented defaults."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mailmigrator.ops.config import ConfigError, Endpoint, load_config


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailmigrator.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("body", "expected"), [
    # wrong type
    ('[target]\nport = "143"\n', "[target] port must be a whole number"),
    ("[migration]\nconcurrency = 1.5\n", "[migration] concurrency must be a whole number"),
    ('[migration]\nlease_seconds = "long"\n', "[migration] lease_seconds must be a number"),
    ("[store]\nlock_timeout = true\n", "[store] lock_timeout must be a number"),
    ("[migration]\npasswords_only = 1\n", "[migration] passwords_only must be true or false"),
    ("[source]\nhost = 5\n", "[source] host must be a string (in quotes)"),
    ("[migration]\nlog_file = 5\n", "[migration] log_file must be a path in quotes"),
    ('[migration]\nexclude_folders = "Trash"\n', '[migration] exclude_folders must be a list of strings, e.g. ["Trash"]'),
    ("source = 5\n", "[source] must be a table"),
    ("[migration]\ndomains = 3\n", '[migration] domains must be a table of "IP" = "domain"'),
    ('[migration.domains]\n"192.0.2.1" = 5\n', "[migration] domains: '192.0.2.1' must map to a domain name string"),
    # out of bounds
    ("[migration]\nconcurrency = 0\n", "[migration] concurrency must be at least 1"),
    ("[migration]\nconnections_per_source_host = 0\n", "[migration] connections_per_source_host must be at least 1"),
    ("[migration]\nmax_message_size = -1\n", "[migration] max_message_size must be at least 0"),
    ("[migration]\npost_migrate_timeout = 0\n", "[migration] post_migrate_timeout must be a positive number"),
    ("[migration]\nlease_seconds = 4.5\n", "[migration] lease_seconds must be at least 5"),
    ("[proxy]\nsend_timeout = -1\n", "[proxy] send_timeout must be a positive number"),
    ('[source]\nhost = "old"\nimap_port = 70000\n', "[source] imap_port must be at most 65535"),
    ("[target]\npop3_port = -1\n", "[target] pop3_port must be at least 0"),
    # unknown key or section
    ('[source]\nhost = "old"\nhots = "x"\n', "unknown key [source] hots"),
    ('[source]\nhots = "x"\n', "unknown key [source] hots"),
    ("[migration.extra]\nx = 1\n", "unknown key [migration] extra"),
    ("[bogus]\n", "unknown section [bogus] in mailmigrator.toml"),
    ('path = "elsewhere.toml"\n', "unknown section [path]"),
    # bad choice
    ('[source]\nhost = "old"\ntls = "sometimes"\n', "[source] tls = 'sometimes' is not one of: detect, direct, disable"),
    ('[migration]\npost_migrate_password = "pipe"\n', "[migration] post_migrate_password = 'pipe' is not one of: stdin, env, argv"),
    ('[target]\npassword_scheme = "MD5"\n', "[target] password_scheme = 'MD5' is not one of"),
    # bad endpoint or host
    ('[proxy]\nimap = "0.0.0.0:143"\n', '[proxy] imap must be a list of "address:port" strings'),
    ("[proxy]\nimap = [143]\n", '[proxy] imap must be a list of "address:port" strings'),
    ('[proxy]\nimap = ["0.0.0.0"]\n', "[proxy] imap: '0.0.0.0' has no port"),
    ('[admin]\nlisten = ["[::1]:99999"]\n', "[admin] listen: '99999' is not a port number (1-65535)"),
    ('[proxy]\npop3 = [""]\n', "[proxy] pop3 is empty"),
    ('[source]\nhost = "old:http"\n', "[source] host: 'http' is not a port number"),
    ('[source]\nhost = ""\n', "[source] host is empty"),
    ('[source]\nprotocol = "pop3"\n', "[source] host is missing"),
    ('[migration.domains]\n"not-an-ip" = "a.com"\n', "[migration] domains: 'not-an-ip' is not an IP address"),
    ('[target]\nold_smtp = "old.example.com 25"\n', "[target] old_smtp = 'old.example.com 25' is not an SMTP next hop"),
    ('[target]\nold_smtp = "[old.example.com]:0"\n', "[target] old_smtp = '[old.example.com]:0' is not an SMTP"),
    ('[target]\nold_smtp = "[old.example.com]25"\n', "[target] old_smtp = '[old.example.com]25' is not an SMTP"),
    ('[target]\ntransport_map = "transport"\n', "[target] transport_map needs old_smtp"),
    # keys that need another key
    ('[source]\nhost = "old"\nadmin_user = "admin"\n', "[source] admin_user needs admin_password_file"),
    ('[target]\nprovisioning = "postgresql"\n', '[target] provisioning = "postgresql" needs postgresql_url'),
    ('[proxy]\nimaps = ["0.0.0.0:993"]\n', "[proxy] imaps/pop3s listeners need tls_cert and tls_key"),
])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(config_file(tmp_path, body))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_an_empty_file_gives_the_defaults_beside_it(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, ""))
    assert config.path == tmp_path / "mailmigrator.toml" and config.base_dir == tmp_path
    assert config.store.url == f"sqlite://{tmp_path / 'mailmigrator.sqlite'}"
    assert config.store.credential_key_file == tmp_path / "credentials.key"
    assert (config.store.encryption_key_file, config.store.lock_timeout) == (None, 10.0)
    assert config.source is None and config.target is None
    assert config.admin.listen == (Endpoint("127.0.0.1", 8025),)
    m = config.migration
    assert (m.access_mode, m.concurrency, m.connections_per_source_host, m.max_message_size) == ("username", 4, 8, 0)
    assert (m.post_migrate_password, m.post_migrate_timeout, m.lease_seconds) == ("stdin", 60.0, 120.0)
    assert (m.exclude_folders, m.domains, m.node_name) == ((), {}, socket.gethostname())
    assert (config.proxy.imap, config.proxy.max_connections, config.proxy.relay_send_timeout) == ((), 20_000, 600.0)


def test_a_missing_file_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
    assert load_config(tmp_path / "absent.toml", allow_missing=True).store.url.endswith("mailmigrator.sqlite")


def test_empty_tables_are_the_defaults(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, "[store]\n[source]\n[target]\n[admin]\n"))
    assert config.source is None and config.target is None
    assert config.admin.listen == (Endpoint("127.0.0.1", 8025),)


def test_an_admin_table_without_listen_serves_no_console(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[admin]\npassword_file = "admin.secret"\n'))
    assert config.admin.listen == () and config.admin.password_file == tmp_path / "admin.secret"


def test_ports_follow_the_tls_mode_and_the_host(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[source]\nhost = "old"\ntls = "direct"\n'
                                               '[target]\nhost = "[::1]:1143"\n'))
    assert config.source is not None and (config.source.imap_port, config.source.pop3_port) == (993, 995)
    assert config.target is not None and (config.target.host, config.target.port, config.target.pop3_port) == (
        "::1", 1143, 110)
    pop3 = load_config(config_file(tmp_path, '[source]\nhost = "old:1110"\nprotocol = "pop3"\n')).source
    assert pop3 is not None and (pop3.host, pop3.imap_port, pop3.pop3_port) == ("old", 143, 1110)
    explicit = load_config(config_file(tmp_path, '[source]\nhost = "old:1143"\nimap_port = 2143\n')).source
    assert explicit is not None and explicit.imap_port == 2143


def test_values_are_normalised_and_paths_resolved(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[migration]\nprimary_domain = " Example.COM "\n'
                                               'migration_account = " Migration@Example.com"\nlog_file = "log/m.log"\n'
                                               'post_migrate_script = ""\nexclude_folders = ["Trash", "Spam"]\n'
                                               'lease_seconds = 30\n[migration.domains]\n"192.0.2.1" = " Navi1.COM "\n'
                                               '[proxy]\nimap = ["[::]:143", "0.0.0.0:1143"]\n'
                                               '[store]\nencryption_key_file = "/etc/mm/store.key"\n'))
    m = config.migration
    assert (m.primary_domain, m.migration_account) == ("example.com", "migration@example.com")
    assert m.log_file == tmp_path / "log" / "m.log" and m.post_migrate_script is None
    assert m.exclude_folders == ("Trash", "Spam") and m.domains == {"192.0.2.1": "navi1.com"}
    assert isinstance(m.lease_seconds, float) and m.lease_seconds == 30.0
    assert [str(e) for e in config.proxy.imap] == ["[::]:143", "0.0.0.0:1143"]
    assert m.node_name == f"{socket.gethostname()}/[::]:143"
    assert config.store.encryption_key_file == Path("/etc/mm/store.key")


def test_sections_are_immutable_and_hashable(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, '[source]\nhost = "old"\n[proxy]\nimap = ["127.0.0.1:1143"]\n'))
    assert config.source is not None
    with pytest.raises(ValueError):
        config.source.host = "other"  # type: ignore[misc]
    assert len({config.source, config.proxy, config.store, config.admin}) == 4
