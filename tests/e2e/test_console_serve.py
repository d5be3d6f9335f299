"""The console of a real `mailmigrator serve` with its proxy, against the Dovecot pair, in headless chromium."""

from __future__ import annotations

import imaplib
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from browser import browser  # noqa: E402,F401  (fixture)
from console_fixtures import ADMIN_PASSWORD  # noqa: E402
from proxy_fixtures import OLD_PASSWORD, ensure_notice_account, pair, seed_user, write_config  # noqa: E402,F401

from mailmigrator.ops.console.auth import write_password_file  # noqa: E402

pytestmark = pytest.mark.dovecot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_console_of_a_running_serve_follows_a_proxy_login(pair: Any, tmp_path: Path, browser: Any) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seed_user(pair, "zoe@example.com", messages=12)
    ensure_notice_account(pair)
    imap_port, pop3_port, admin_port = free_port(), free_port(), free_port()
    password_file = tmp_path / "admin.secret"
    write_password_file(password_file, ADMIN_PASSWORD)
    path = write_config(tmp_path, pair, tls=False)
    # write_config leaves placeholder ports (for in-process tests); this serve runs as a process.
    text = re.sub(r'^imap = \["127\.0\.0\.1:\d+"\]', f'imap = ["127.0.0.1:{imap_port}"]', path.read_text(), flags=re.M)
    text = re.sub(r'^pop3 = \["127\.0\.0\.1:\d+"\]', f'pop3 = ["127.0.0.1:{pop3_port}"]', text, flags=re.M)
    path.write_text(text + f'\n[admin]\nlisten = ["127.0.0.1:{admin_port}"]\npassword_file = "{password_file}"\n')
    url = f"http://127.0.0.1:{admin_port}"
    serve_log = tmp_path / "serve.log"
    with serve_log.open("wb") as err:
        serve = subprocess.Popen(
            [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
             "--config", str(path), "serve"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_for(lambda: answers(url + "/") or serve.poll() is not None, "the console to answer")
        assert serve.poll() is None, serve_log.read_text()
        wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))

        def wait_text(element_id: str, expected: str, timeout: float = 20) -> None:
            WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: expected in d.find_element(By.ID, element_id).text,
                f"{expected!r} never appeared in #{element_id}")

        browser.get(url + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "login-password"))).send_keys(ADMIN_PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_text("general-table", "notice@example.com")
        assert "127.0.0.1" in browser.find_element(By.ID, "general-table").text

        browser.find_element(By.ID, "btn-start").click()
        wait_text("run-state", "started")
        # serve polls the run state every second; the proxy migrates only once it has seen "started".
        wait_for(lambda: b"run state changed" in serve_log.read_bytes(), "serve to see the Start press")

        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=accounts]").click()
        wait_text("page-info", "no accounts yet")
        client = imaplib.IMAP4("127.0.0.1", imap_port, timeout=20)
        client.login("zoe", OLD_PASSWORD)
        client.logout()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-login='zoe@example.com']"))
        try:
            WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: "completed" in d.find_element(By.CSS_SELECTOR, "tr[data-login='zoe@example.com']").text)
        except TimeoutException:
            row = browser.find_element(By.CSS_SELECTOR, "tr[data-login='zoe@example.com']").text
            tail = serve_log.read_text(errors="replace").splitlines()[-15:]
            raise AssertionError(f"zoe never showed as completed: {row!r}; serve said:\n" + "\n".join(tail)) from None
        row = browser.find_element(By.CSS_SELECTOR, "tr[data-login='zoe@example.com']").text
        assert " 14 " in f" {row} ", row  # 12 in INBOX + 2 in Archive/2020
        wait_text("progress-text", "1 of 1 accounts done")

        browser.find_element(By.CSS_SELECTOR, "tr[data-login='zoe@example.com']").click()
        wait_text("history-body", "MigrationCompleted")
        history = browser.find_element(By.ID, "history-body").text
        for name in ("LoginSeen", "PasswordVerified", "AccountCreated", "MigrationStarted", "FolderCopied"):
            assert name in history
        assert OLD_PASSWORD not in history

        browser.find_element(By.ID, "btn-finish").click()
        wait_text("run-state", "finish")
        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=log]").click()
        wait_text("log-lines", "FINISH MIGRATION requested (by console)")
        assert "zoe@example.com  migration completed" in browser.find_element(By.ID, "log-lines").text
        # The running serve takes the finish work on and sweeps with the vault's password.
        wait_text("log-lines", "FINISH MIGRATION completed: 1 accounts swept", timeout=60)
        assert "zoe@example.com  finish sweep: no new mail" in browser.find_element(By.ID, "log-lines").text
        wait_text("run-state", "finished")

        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/run/stop', {method: 'POST', credentials: 'same-origin'}).then(r => done(r.status));")
        assert status == 403
        assert OLD_PASSWORD.encode() not in serve_log.read_bytes()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
