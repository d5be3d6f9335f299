"""Split delivery through a real run: the transport map routes exactly the unswitched accounts to the old server,
and `postmap -q` resolves it, after every migration and after `replay`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import testbed
from copy_testbed import message_count, new_user, run_cli, started, write_config
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config

pytestmark = pytest.mark.dovecot
HOP = "[old.example.com]:25"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[testbed.DovecotServer, testbed.DovecotServer]]:
    ca = trustme.CA()
    base = tmp_path_factory.mktemp("transport-pair")
    with started(testbed.make_old_server(base / "old", ca)) as old, started(testbed.make_new_server(base / "new", ca)) as new:
        yield old, new


def lookup(path: Path, key: str) -> str | None:
    postmap = shutil.which("postmap")
    if postmap is None:
        pytest.skip("postmap (Debian postfix) is not installed")
    done = subprocess.run([postmap, "-q", key, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip() if done.returncode == 0 else None


def routed(path: Path) -> dict[str, str]:
    lines = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {fields[0]: fields[1] for fields in lines}


def test_the_transport_map_follows_every_switch_and_replay(
        pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = pair
    (ann, ann_password), (ben, ben_password) = new_user(old, new), new_user(old, new)
    for login in (ann, ben):
        testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(3)])
    transport = tmp_path / "postfix" / "transport"
    transport.parent.mkdir()
    config_path = write_config(tmp_path, old, new, while_copying="old-server")
    config_path.write_text(config_path.read_text().replace(
        "[migration]\n", f'transport_map = "{transport}"\nold_smtp = "{HOP}"\npostmap = "postmap"\n[migration]\n', 1))
    cli = ("--config", str(config_path))

    # Both users worked through the proxy while the run was stopped: known, not moved.
    wired = open_store(load_config(config_path), create=True)
    assert wired is not None
    for login in (ann, ben):
        wired.app.record_login(login, "imap", "192.0.2.7", "192.0.2.1")
    wired.close()
    assert run_cli(capsys, monkeypatch, "", *cli, "status")[0] == 0
    assert routed(transport) == {ann: f"smtp:{HOP}", ben: f"smtp:{HOP}"}
    assert lookup(transport, ann) == lookup(transport, ben) == f"smtp:{HOP}"

    code, out, err = run_cli(capsys, monkeypatch, ann_password + "\n", *cli, "migrate", "--user", ann,
                             "--password-stdin")
    assert code == 0, err
    assert message_count(new, ann) == 3
    assert routed(transport) == {ben: f"smtp:{HOP}"}
    assert lookup(transport, ann) is None and lookup(transport, ben) == f"smtp:{HOP}"

    # The map is derived: removed or edited by hand, `replay` writes it again from the events.
    transport.write_text(f"{ann}  smtp:[elsewhere.example.com]:25\n")
    assert run_cli(capsys, monkeypatch, "", *cli, "replay")[0] == 0
    assert routed(transport) == {ben: f"smtp:{HOP}"}
    assert lookup(transport, ann) is None and lookup(transport, ben) == f"smtp:{HOP}"

    code, out, err = run_cli(capsys, monkeypatch, ben_password + "\n", *cli, "migrate", "--user", ben,
                             "--password-stdin")
    assert code == 0, err
    assert routed(transport) == {}
    assert lookup(transport, ben) is None
    wired = open_store(load_config(config_path), create=False)
    assert wired is not None
    assert {wired.app.account(login).state for login in (ann, ben)} == {"completed"}
    assert [e.__class__.__name__ for e in wired.app.history(ann)][-1] == "SwitchedOver"
    wired.close()
