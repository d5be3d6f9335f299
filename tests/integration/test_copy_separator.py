"""A real folder whose name holds the new server's separator is escaped, not split into a hierarchy.

Dovecot's default Maildir++ layout refuses a separator character in a name in
either direction ("." server: no "/"; "/" server: no "."), so the old server
here uses Maildir with LAYOUT=fs and "/" as separator, which stores a folder
"Q1.2024" as it is; the new server uses Maildir++ with ".".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trustme

from copy_testbed import new_user, run_cli, started, write_config
from mailmigrator.domain.folders import SEPARATOR_ESCAPES
import testbed

pytestmark = pytest.mark.dovecot

DOTTED = "Q1.2024"


class FsLayoutServer(testbed.DovecotServer):
    """A test-bed Dovecot whose Maildir keeps one directory per folder, so "." is an ordinary character."""

    def _render_config(self) -> str:
        config = super()._render_config()
        plain = "mail_location = maildir:~/Maildir\n"
        assert plain in config, "the test bed's mail_location changed; adjust this test"
        return config.replace(plain, "mail_location = maildir:~/Maildir:LAYOUT=fs\n")


@pytest.fixture(scope="module")
def dotted_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[testbed.DovecotServer, testbed.DovecotServer]]:
    """Old: "/" separator, no prefix, LAYOUT=fs. New: "." separator, "INBOX." prefix, Maildir++."""
    ca = trustme.CA()
    base = tmp_path_factory.mktemp("separator-pair")
    old = FsLayoutServer(base / "old", name="old", ca=ca, separator="/", prefix="", master_user="admin")
    new = testbed.make_new_server(base / "new", ca, separator=".", prefix="INBOX.")
    with started(old) as old, started(new) as new:
        yield old, new


def test_folder_name_with_the_targets_separator_is_escaped_and_verifies_equal(
    dotted_pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = dotted_pair
    login, password = new_user(old, new)
    when = datetime(2024, 3, 31, 12, 0, tzinfo=timezone.utc)
    dotted = [testbed.SeedMessage(testbed.make_message(f"dotted-{i}", date=when), when, ("\\Seen",)) for i in range(3)]
    nested = [testbed.SeedMessage(testbed.make_message("nested", date=when), when, ())]
    with old.imap(login) as client:
        client.create_folder(DOTTED)  # one folder, not "Q1" with a child "2024"
        client.subscribe_folder(DOTTED)
        testbed.append_messages(client, DOTTED, dotted)
        testbed.create_folder(client, "Projekte/Alpha")
        testbed.append_messages(client, "Projekte/Alpha", nested)
        assert DOTTED in {name for _, _, name in client.list_folders()}
    before = old.snapshot(login)
    config = write_config(tmp_path, old, new)

    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                           "--user", login, "--password-stdin")
    assert code == 0, err

    escaped = DOTTED.replace(".", SEPARATOR_ESCAPES["."])
    assert escaped == "Q1\u20242024"
    with new.imap(login) as client:
        names = {name for _, _, name in client.list_folders()}
    assert f"INBOX.{escaped}" in names  # the documented look-alike, one folder
    assert "INBOX.Q1" not in names and "INBOX.Q1.2024" not in names
    assert "INBOX.Projekte.Alpha" in names  # real hierarchy still translated
    after = new.snapshot(login)
    assert sorted(after.folders[escaped]) == sorted(before.folders[DOTTED])
    assert sorted(after.folders["Projekte/Alpha"]) == sorted(before.folders["Projekte/Alpha"])
    assert escaped in after.subscribed

    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err
    assert "equal" in out
