"""The console's JSON API and /metrics over real HTTP: auth, CSRF, throttling, every endpoint and its bad input."""

from __future__ import annotations

import base64
import ssl
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import structlog.testing
import trio

from mailmigrator.ops.console.auth import AdminPassword, Sessions
from console_fixtures import (
    ADMIN_PASSWORD,
    RunningConsole,
    console_config,
    open_wired,
    serve_console,
)

SOURCE_SECRET = "source-admin-secret-Z7"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningConsole]:
    secret = tmp_path / "source-admin.secret"
    secret.write_text(SOURCE_SECRET)
    secret.chmod(0o600)
    config = console_config(tmp_path)
    wired = open_wired(config)
    try:
        async with serve_console(config, wired) as console:
            yield console
    finally:
        wired.close()


def seed_accounts(running: RunningConsole) -> None:
    app = running.wired.app
    app.record_login("alice@example.com", "imap", "127.0.0.2", "127.0.0.1")
    app.record_password_verified("alice@example.com", "imap-login")
    app.record_account_created("alice@example.com", "alice@example.com", [], "passwd-file")
    app.record_migration_started("alice@example.com", [{"source": "INBOX", "target": "INBOX", "messages": 3}], 3, 3000)
    app.record_folder_copied(
        "alice@example.com", source_folder="INBOX", target_folder="INBOX", uidvalidity=7, highest_uid=3,
        messages=3, bytes=3000, skipped=[], done=True)
    app.record_completed("alice@example.com", 3, 3000, 1, 1.5, False)
    app.record_login("bob@example.com", "pop3", "127.0.0.3", "127.0.0.1")
    app.record_password_rejected("bob@example.com", "wrong password")
    app.record_login("carol@example.com", "imap", "127.0.0.4", "127.0.0.1")
    app.record_password_verified("carol@example.com", "imap-login")
    app.record_failed("carol@example.com", "target refused APPEND", False)


async def test_everything_but_the_page_shell_needs_a_login(running: RunningConsole) -> None:
    async with running.client() as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<title>mailmigrator console</title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for path in ("/api/run", "/api/general", "/api/accounts", "/api/accounts/a@example.com",
                     "/api/accounts/a@example.com/history", "/api/log", "/api/manual/jobs", "/api/session",
                     "/metrics", "/api/report"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"] == "log in first: POST /api/login with the admin password"
        for path in ("/api/run/start", "/api/manual/migrate", "/api/manual/bulk"):
            assert (await client.post(path)).status_code == 401, path
    assert running.wired.app.run().state == "stopped"


async def test_a_request_failing_inside_the_service_is_logged_and_answered_in_one_line(
        running: RunningConsole, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_accounts(running)

    def broken_catch_up(batch_size: int = 0) -> int:
        raise RuntimeError("views out of step")

    async with running.logged_in() as (client, _headers):
        monkeypatch.setattr(running.wired.views, "catch_up", broken_catch_up)
        with structlog.testing.capture_logs() as logged:
            response = await client.get("/api/accounts/alice@example.com")
        assert response.status_code == 500
        assert response.json() == {"error": "the request failed inside the service; its log has the details"}
        failed = [entry for entry in logged if entry["event"] == "console request failed"]
        assert failed and failed[0]["path"] == "/api/accounts/alice@example.com"
        assert failed[0]["exc_info"] is True  # the traceback goes to the service log, not to the client
        assert "views out of step" not in response.text
        monkeypatch.undo()
        assert (await client.get("/api/accounts/alice@example.com")).status_code == 200


async def test_login_gives_a_strict_httponly_cookie_and_a_csrf_token(running: RunningConsole) -> None:
    async with running.client() as client:
        response = await client.post("/api/login", json={"password": ADMIN_PASSWORD})
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert "mm_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; see the TLS test
        token = response.json()["csrf_token"]
        assert (await client.get("/api/session")).json() == {"csrf_token": token}
        assert (await client.post("/api/logout")).status_code == 200
        assert (await client.get("/api/session")).status_code == 401


async def test_bad_login_bodies_are_refused_with_a_clear_message(running: RunningConsole) -> None:
    async with running.client() as client:
        response = await client.post("/api/login", content=b"password=x",
                                     headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 415 and "application/json" in response.json()["error"]
        response = await client.post("/api/login", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"] == "the body is not valid JSON"
        response = await client.post("/api/login", json={})
        assert response.status_code == 400 and "'password'" in response.json()["error"]


async def test_wrong_admin_passwords_are_refused_then_throttled(running: RunningConsole) -> None:
    async with running.client() as client:
        for _ in range(5):
            response = await client.post("/api/login", json={"password": "guess"})
            assert response.status_code == 401 and response.json()["error"] == "wrong admin password"
            assert "set-cookie" not in response.headers
        # Now even the right password is refused from this address for a while.
        response = await client.post("/api/login", json={"password": ADMIN_PASSWORD})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "300"
        assert "too many wrong admin passwords" in response.json()["error"]


async def admin_login_status(running: RunningConsole, source: str, password: str) -> int:
    async with running.client(source) as client:
        return (await client.post("/api/login", json={"password": password})).status_code


async def test_strangers_flooding_wrong_passwords_cannot_lock_the_admin_out(running: RunningConsole) -> None:
    assert await admin_login_status(running, "127.0.0.9", ADMIN_PASSWORD) == 200  # the admin's usual address
    async with trio.open_nursery() as nursery:
        for n in range(2, 9):  # 7 strangers, 4 wrong each: 28 wrong passwords in all
            for _ in range(4):
                nursery.start_soon(admin_login_status, running, f"127.0.0.{n}", "guess")
    # The budget in all is used up for strangers, even with the right password ...
    assert await admin_login_status(running, "127.0.0.50", ADMIN_PASSWORD) == 429
    # ... but not for the address the admin logged in from, nor for the console's own host.
    assert await admin_login_status(running, "127.0.0.9", ADMIN_PASSWORD) == 200
    assert await admin_login_status(running, "127.0.0.1", ADMIN_PASSWORD) == 200


class CountingAdminPassword(AdminPassword):
    """The real argon2 check, noting how many run at once."""

    running = 0
    peak = 0
    lock = threading.Lock()

    def matches(self, password: str) -> bool:
        cls = CountingAdminPassword
        with cls.lock:
            cls.running += 1
            cls.peak = max(cls.peak, cls.running)
        try:
            return super().matches(password)
        finally:
            with cls.lock:
                cls.running -= 1


async def test_argon2_checks_run_a_few_at_a_time(running: RunningConsole) -> None:
    running.console.admin_password = CountingAdminPassword(running.console.admin_password.hash)
    statuses: list[int] = []

    async def wrong(n: int) -> None:
        statuses.append(await admin_login_status(running, f"127.0.4.{n}", "guess"))

    async with trio.open_nursery() as nursery:
        for n in range(1, 19):
            nursery.start_soon(wrong, n)
    assert statuses.count(401) == 18
    assert CountingAdminPassword.peak == 2


async def test_state_changes_need_the_csrf_token(running: RunningConsole) -> None:
    async with running.logged_in() as (client, csrf):
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            response = await client.post("/api/run/start", headers=headers)
            assert response.status_code == 403
            assert response.json()["error"].startswith("missing or wrong CSRF token")
            response = await client.post("/api/manual/migrate", json={"login": "a", "password": "b"}, headers=headers)
            assert response.status_code == 403
        assert running.wired.app.run().state == "stopped"
        assert running.console.manual.jobs == {}
        assert (await client.post("/api/run/start", headers=csrf)).status_code == 200


async def test_start_stop_finish_record_the_same_events_as_the_cli(running: RunningConsole) -> None:
    async with running.logged_in() as (client, csrf):
        assert (await client.get("/api/run")).json()["state"] == "stopped"
        assert (await client.post("/api/run/start", headers=csrf)).json() == {"changed": True, "state": "started"}
        assert (await client.post("/api/run/start", headers=csrf)).json() == {"changed": False, "state": "started"}
        assert (await client.get("/api/run")).json()["state"] == "started"
        assert (await client.post("/api/run/finish", headers=csrf)).json() == {"changed": True, "state": "finishing"}
        assert (await client.post("/api/run/stop", headers=csrf)).json() == {"changed": True, "state": "stopped"}
        response = await client.post("/api/run/explode", headers=csrf)
        assert response.status_code == 404 and "no button 'explode'" in response.json()["error"]
        lines = (await client.get("/api/log")).json()["lines"]
    run = running.wired.app.run()
    assert run.state == "stopped" and run.settings == running.config.general_settings()
    assert any(line.endswith("MIGRATION STARTED (by console)") for line in lines)
    assert any(line.endswith("FINISH MIGRATION requested (by console)") for line in lines)


async def test_report_is_served_escaped_in_each_format(running: RunningConsole) -> None:
    seed_accounts(running)
    app = running.wired.app
    app.record_login("dave@example.com", "imap", "127.0.0.5", "127.0.0.1")
    app.record_password_verified("dave@example.com", "imap-login")
    app.record_failed("dave@example.com", "<script>alert(1)</script>", False)
    async with running.logged_in() as (client, _):
        page = await client.get("/api/report")
        csv_text = await client.get("/api/report?format=csv")
        as_json = await client.get("/api/report?format=json")
        bad = await client.get("/api/report?format=pdf")
        shell = await client.get("/")
    assert page.headers["content-type"].startswith("text/html") and page.text.count("<tr><td>") == 4
    assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert csv_text.headers["content-disposition"] == 'attachment; filename="mailmigrator-report.csv"'
    assert csv_text.text.splitlines()[0].startswith("login,state,folders,old_messages")
    alice = next(a for a in as_json.json()["accounts"] if a["login"] == "alice@example.com")
    assert (alice["old_messages"], alice["new_messages"], alice["state"]) == (3, 3, "completed")
    assert bad.status_code == 400 and "not one of html, csv, json" in bad.json()["error"]
    assert 'href="/api/report?format=html"' in shell.text


async def test_general_shows_the_effective_settings_and_no_secret(running: RunningConsole) -> None:
    async with running.logged_in() as (client, _):
        response = await client.get("/api/general")
    assert response.json() == running.config.general_settings()
    assert response.json()["domains"] == {"192.0.2.1": "navi1.com"}
    assert SOURCE_SECRET not in response.text and "source-admin.secret" not in response.text


async def test_accounts_are_paged_filtered_and_searched(running: RunningConsole) -> None:
    seed_accounts(running)
    async with running.logged_in() as (client, _):
        page = (await client.get("/api/accounts", params={"limit": 2})).json()
        assert page["total"] == 3 and [a["login"] for a in page["accounts"]] == ["alice@example.com", "bob@example.com"]
        assert page["counts"] == {"expected": 0, "withdrawn": 0, "seen": 1, "verified": 0, "created": 0,
                                  "precopied": 0, "precopying": 0, "copying": 0, "copied": 0,
                                  "switching": 0, "completed": 1, "swept": 0, "failed": 1}
        rest = (await client.get("/api/accounts", params={"limit": 2, "offset": 2})).json()
        assert [a["login"] for a in rest["accounts"]] == ["carol@example.com"]
        failed = (await client.get("/api/accounts", params={"state": "failed"})).json()
        assert failed["total"] == 1 and failed["accounts"][0]["error"] == "target refused APPEND"
        found = (await client.get("/api/accounts", params={"q": "BOB"})).json()
        assert [a["login"] for a in found["accounts"]] == ["bob@example.com"]
        alice = page["accounts"][0]
        assert alice == {**alice, "state": "completed", "locked": False, "folders": 1, "messages": 3, "bytes": 3000}
        run = (await client.get("/api/run")).json()
        assert run["progress"]["accounts_total"] == 3 and run["progress"]["accounts_done"] == 1
        assert run["progress"]["bytes_done"] == 3000 and run["progress"]["bytes_planned"] == 3000


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=abc", "limit='abc' is not a whole number"),
        ("limit=0", "limit=0 is too small; it must be at least 1"),
        ("limit=100000", "limit=100000 is too large; ask for at most 500 accounts per page"),
        ("offset=-1", "offset='-1' is not a whole number"),
        ("offset=1.5", "offset='1.5' is not a whole number"),
        ("state=done", "state='done' is not an account state"),
    ],
)
async def test_bad_paging_values_are_a_400_naming_the_parameter(
    running: RunningConsole, query: str, message: str
) -> None:
    async with running.logged_in() as (client, _):
        response = await client.get(f"/api/accounts?{query}")
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


async def test_one_account_and_its_history(running: RunningConsole) -> None:
    seed_accounts(running)
    async with running.logged_in() as (client, _):
        doc = (await client.get("/api/accounts/alice")).json()  # a bare name gets the primary domain
        assert doc["login"] == "alice@example.com" and doc["folders"]["INBOX"]["messages"] == 3
        history = (await client.get("/api/accounts/alice@example.com/history")).json()
        names = [row["event"] for row in history["events"]]
        assert names == ["Registered", "LoginSeen", "PasswordVerified", "AccountCreated", "MigrationStarted",
                         "FolderCopied", "MigrationCompleted"]
        assert history["events"][1]["data"]["client_address"] == "127.0.0.2"
        for path in ("/api/accounts/nobody@example.com", "/api/accounts/nobody@example.com/history"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.json()["error"] == "no account 'nobody@example.com' is recorded; /api/accounts lists them"
        response = await client.get("/api/accounts/a%20b@example.com")
        assert response.status_code == 400 and "user@domain" in response.json()["error"]


async def test_log_tail_and_follow(running: RunningConsole) -> None:
    seed_accounts(running)
    async with running.logged_in() as (client, _):
        for n in range(600):
            running.wired.app.record_login(f"bulk{n}@example.com", "imap", "127.0.0.9", "127.0.0.1")
        first = (await client.get("/api/log", params={"after": 0})).json()
        assert len(first["lines"]) == 500 and first["next"] == 500
        lines = first["lines"]
        while rest := (await client.get("/api/log", params={"after": len(lines)})).json()["lines"]:
            lines += rest
        everything = {"after": 0, "next": len(lines), "lines": lines}
        assert everything["next"] > 600
        assert everything["after"] == 0 and everything["next"] == len(everything["lines"]) > 5
        tail = (await client.get("/api/log", params={"tail": 2})).json()
        assert tail["lines"] == everything["lines"][-2:] and tail["next"] == everything["next"]
        running.wired.app.record_login("dave@example.com", "imap", "127.0.0.9", "127.0.0.1")
        more = (await client.get("/api/log", params={"after": everything["next"]})).json()
        assert any("dave@example.com  IMAP login from 127.0.0.9" in line for line in more["lines"])
        # Paged: `limit` lines at a time, `next` continues where the page ended.
        pages: list[str] = []
        position = 0
        while page := (await client.get("/api/log", params={"after": position, "limit": 2})).json()["lines"]:
            assert len(page) <= 2
            pages += page
            position += len(page)
        assert pages == everything["lines"] + more["lines"]
        for query, message in (("after=x", "after='x' is not a whole number"),
                               ("tail=0", "tail=0 is out of range"), ("tail=9999", "tail=9999 is out of range"),
                               ("after=0&limit=0", "limit=0 is out of range"),
                               ("after=0&limit=5001", "limit=5001 is out of range")):
            response = await client.get(f"/api/log?{query}")
            assert response.status_code == 400 and response.json()["error"].startswith(message)


async def test_metrics_in_prometheus_text(running: RunningConsole) -> None:
    seed_accounts(running)
    async with running.logged_in() as (client, csrf):
        await client.post("/api/run/start", headers=csrf)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    for expected in (
        'mailmigrator_run_state{state="started"} 1',
        'mailmigrator_run_state{state="stopped"} 0',
        'mailmigrator_accounts{state="completed"} 1',
        'mailmigrator_accounts{state="seen"} 1',
        "mailmigrator_accounts_locked 1",
        "mailmigrator_messages_copied_total 3",
        "mailmigrator_bytes_copied_total 3000",
        "mailmigrator_proxy_logins_total 3",
        'mailmigrator_password_checks_total{outcome="verified"} 2',
        'mailmigrator_password_checks_total{outcome="rejected"} 1',
        'mailmigrator_failures{kind="copy_permanent"} 1',
        "# TYPE mailmigrator_bytes_copied_total counter",
    ):
        assert expected in lines, expected
    assert any(line.startswith("mailmigrator_copy_bytes_per_second ") for line in lines)


async def test_metrics_accept_http_basic_with_the_admin_password(running: RunningConsole) -> None:
    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()}

    async with running.client() as client:
        assert (await client.get("/metrics", headers=basic(ADMIN_PASSWORD))).status_code == 200
        response = await client.get("/metrics", headers=basic("wrong"))
        assert response.status_code == 401 and response.json()["error"] == "wrong admin password"
        # Basic auth is for /metrics only.
        assert (await client.get("/api/run", headers=basic(ADMIN_PASSWORD))).status_code == 401


async def test_manual_migration_reports_progress_and_never_shows_the_password(running: RunningConsole) -> None:
    secret = "manual-Secret-42"
    async with running.logged_in() as (client, csrf):
        response = await client.post("/api/manual/migrate", json={"login": "erin", "password": secret}, headers=csrf)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["logins"] == ["erin@example.com"] and secret not in response.text
        with trio.fail_after(20):
            while job["state"] in ("queued", "running"):
                await trio.sleep(0.2)
                job = (await client.get("/api/manual/jobs")).json()["jobs"][0]
        jobs_text = (await client.get("/api/manual/jobs")).text
        log_text = json.dumps((await client.get("/api/log")).json())
    # The old server in this config is a closed port: the failure is named, the password is nowhere.
    assert job["state"] == "failed"
    assert job["outcomes"][0]["message"].startswith("cannot reach the old server")
    assert secret not in jobs_text and secret not in log_text
    assert not running.wired.app.has_account("erin@example.com")


async def test_manual_migration_bad_input(running: RunningConsole) -> None:
    async with running.logged_in() as (client, csrf):
        response = await client.post("/api/manual/migrate", json={"login": "erin"}, headers=csrf)
        assert response.status_code == 400 and "'password'" in response.json()["error"]
        response = await client.post("/api/manual/migrate", json={"login": "a b@x.org", "password": "p"}, headers=csrf)
        assert response.status_code == 400 and "user@domain" in response.json()["error"]


async def test_bulk_upload_limits_and_problems(running: RunningConsole, tmp_path: Path) -> None:
    async with running.logged_in() as (client, csrf):
        response = await client.post("/api/manual/bulk", content=b"x" * (1024 * 1024 + 1), headers=csrf)
        assert response.status_code == 413
        assert response.json()["error"] == "request body of 1,048,577 bytes is larger than the limit of 1,048,576 bytes"
        response = await client.post("/api/manual/bulk", content=b"\xff\xfe", headers=csrf)
        assert response.status_code == 400 and response.json()["error"] == "the bulk file is not UTF-8 text"
        response = await client.post("/api/manual/bulk", content=b"# only a comment\nnopassword\n", headers=csrf)
        assert response.status_code == 400
        assert response.json()["error"] == ("the bulk file has no valid user:password line "
                                             "(line 2: no password: write user:password)")
        body = "frank:Bulk-Secret-1\nnopassword\ngina@example.com:Bulk-Secret-2:g@example.org\n"
        response = await client.post("/api/manual/bulk", content=body.encode(), headers=csrf)
        assert response.status_code == 202
        job = response.json()
        assert job["kind"] == "bulk" and job["accounts"] == 2
        assert job["problems"] == ["line 2: no password: write user:password"]
        assert "Bulk-Secret" not in response.text


async def test_an_oversized_body_without_content_length_is_cut_off(running: RunningConsole) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 65536

    async with running.logged_in() as (client, csrf):
        response = await client.post("/api/manual/bulk", content=chunks(), headers=csrf)
    assert response.status_code == 413
    assert response.json()["error"] == "request body is larger than the limit of 1,048,576 bytes"


def test_sessions_expire_when_idle_and_when_old() -> None:
    now = [0.0]
    sessions = Sessions(idle_seconds=60, max_seconds=300, clock=lambda: now[0])
    session = sessions.open()
    now[0] = 59
    assert sessions.get(session.token) is session
    now[0] = 59 + 61
    assert sessions.get(session.token) is None
    other = sessions.open()
    for t in range(160, 480, 50):  # created at 120: gone after 420
        now[0] = t
        alive = sessions.get(other.token)
    assert alive is None, "a session used all the time still ends at its maximum age"
    assert sessions.get("made-up") is None


def test_the_password_file_must_hold_an_argon2_hash(tmp_path: Path) -> None:
    from mailmigrator.ops.config import ConfigError

    path = tmp_path / "admin.secret"
    path.write_text("plain-password\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold an argon2 hash; write one with `mailmigrator admin-password"):
        AdminPassword.from_file(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by others; chmod 600 it"):
        AdminPassword.from_file(path)


def test_admin_password_command_writes_a_private_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from mailmigrator.ops.cli import main

    path = tmp_path / "admin.secret"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-admin-password\n"))
    assert main(["admin-password", str(path), "--password-stdin"]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    stored = AdminPassword.from_file(path)
    assert stored.matches("a-long-admin-password") and not stored.matches("a-long-admin-passwort")
    assert "a-long-admin-password" not in path.read_text() + capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["admin-password", str(path), "--password-stdin"]) == 1
    assert "at least 8 characters" in capsys.readouterr().err
    assert AdminPassword.from_file(path).matches("a-long-admin-password"), "a refused password changes nothing"


async def test_run_console_serves_https_when_tls_is_configured(tmp_path: Path) -> None:
    import socket

    import trustme

    from mailmigrator.ops.console import run_console

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    password_file = tmp_path / "admin.secret"
    from mailmigrator.ops.console.auth import write_password_file

    write_password_file(password_file, ADMIN_PASSWORD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = console_config(tmp_path, f'[admin]\nlisten = ["127.0.0.1:{port}"]\npassword_file = "{password_file}"\n'
                                      f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    wired = open_wired(config)
    try:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(run_console, config, wired)
            assert urls == [f"https://127.0.0.1:{port}"]
            tls = ssl.create_default_context(cafile=str(ca_file))
            async with httpx.AsyncClient(base_url=urls[0], verify=tls) as client:
                response = await client.post("/api/login", json={"password": ADMIN_PASSWORD})
                assert response.status_code == 200 and "Secure" in response.headers["set-cookie"]
            nursery.cancel_scope.cancel()
    finally:
        wired.close()


async def test_run_console_stays_off_without_a_password_file(tmp_path: Path) -> None:
    from mailmigrator.ops.console import run_console

    config = console_config(tmp_path)
    wired = open_wired(config)
    try:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(run_console, config, wired) == []
    finally:
        wired.close()
