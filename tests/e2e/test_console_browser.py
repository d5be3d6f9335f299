"""The console in a real headless chromium: log in, General, Start, a live account table, history, Finish, log."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from browser import browser  # noqa: E402,F401  (fixture)
from console_fixtures import ADMIN_PASSWORD, RunningConsole, console_config, open_wired, serve_console  # noqa: E402

from mailmigrator.ops.composition import OpenStore  # noqa: E402
from mailmigrator.ops.config import Config  # noqa: E402

SCREENSHOT = Path(os.environ.get("CONSOLE_SCREENSHOT", "")) if os.environ.get("CONSOLE_SCREENSHOT") else None


class ConsoleThread:
    """The console served from its own trio loop in a thread, so that the test can drive a blocking browser."""

    def __init__(self, tmp_path: Path, config: Config | None = None) -> None:
        self.config = config or console_config(tmp_path)
        self.wired: OpenStore = open_wired(self.config)
        self._ready: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        with trio.CancelScope() as scope:
            async with serve_console(self.config, self.wired) as running:
                self._ready.put((running, scope, trio.lowlevel.current_trio_token()))
                await trio.sleep_forever()

    def __enter__(self) -> RunningConsole:
        self._thread.start()
        self.running, self._scope, self._token = self._ready.get(timeout=30)
        return self.running

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=10)
        self.wired.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[RunningConsole]:
    with ConsoleThread(tmp_path) as running:
        yield running


def test_admin_watches_and_steers_a_run_in_the_browser(browser: Any, console: RunningConsole) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))

    def text_of(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    def wait_text(element_id: str, expected: str) -> None:
        wait.until(lambda d: expected in d.find_element(By.ID, element_id).text,
                   f"{expected!r} never appeared in #{element_id}")

    browser.get(console.url + "/")
    login = wait.until(ec.visibility_of_element_located((By.ID, "login-password")))

    login.send_keys("not-the-password")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_text("login-error", "wrong admin password")
    assert not browser.find_element(By.ID, "console-view").is_displayed()

    login.send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait.until(ec.visibility_of_element_located((By.ID, "console-view")))
    wait_text("general-table", "Multi domain migration")
    general = text_of("general-table")
    assert "192.0.2.1 → navi1.com" in general and "standard" in general and "notice@example.com" in general
    assert "source-admin" not in general

    wait_text("run-state", "stopped")
    browser.find_element(By.ID, "btn-start").click()
    wait_text("run-state", "started")
    assert console.wired.app.run().state == "started"

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=accounts]").click()
    wait_text("page-info", "no accounts yet")
    # An account appears and moves on while the page stays loaded: no reload in between.
    app = console.wired.app
    app.record_login("kim@example.com", "imap", "127.0.0.5", "127.0.0.1")
    wait_text("accounts-body", "kim@example.com")
    app.record_password_verified("kim@example.com", "imap-login")
    app.record_account_created("kim@example.com", "kim@example.com", [], "passwd-file")
    app.record_migration_started("kim@example.com", [{"source": "INBOX", "target": "INBOX", "messages": 4}], 4, 4_000_000)
    app.record_folder_copied("kim@example.com", source_folder="INBOX", target_folder="INBOX", uidvalidity=1,
                             highest_uid=4, messages=4, bytes=4_000_000, skipped=[], done=True)
    app.record_completed("kim@example.com", 4, 4_000_000, 1, 2.0, False)
    for n in range(1, 6):
        app.record_login(f"user{n}@example.com", "pop3", f"127.0.0.{10 + n}", "127.0.0.1")
    app.record_password_rejected("user3@example.com", "wrong password")
    wait.until(lambda d: "completed" in d.find_element(By.CSS_SELECTOR, "tr[data-login='kim@example.com']").text)
    wait_text("progress-text", "1 of 6 accounts done")
    wait_text("state-counts", "seen 5")

    browser.find_element(By.ID, "account-search").send_keys("kim")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#accounts-body tr")) == 1)
    if SCREENSHOT is not None:
        browser.find_element(By.ID, "account-search").clear()
        browser.execute_script("document.getElementById('account-search').dispatchEvent(new Event('input'))")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#accounts-body tr")) == 6)
        browser.save_screenshot(str(SCREENSHOT))

    browser.find_element(By.CSS_SELECTOR, "tr[data-login='kim@example.com']").click()
    wait_text("history-body", "MigrationCompleted")
    history = text_of("history-body")
    for name in ("Registered", "LoginSeen", "PasswordVerified", "AccountCreated", "MigrationStarted", "FolderCopied"):
        assert name in history
    assert "INBOX" in text_of("folders-body")

    browser.find_element(By.ID, "btn-finish").click()
    wait_text("run-state", "finishing")
    assert console.wired.app.run().state == "finishing"

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=log]").click()
    wait_text("log-lines", "FINISH MIGRATION requested (by console)")
    assert "kim@example.com  migration completed" in text_of("log-lines")
    app.record_login("late@example.com", "imap", "127.0.0.99", "127.0.0.1")
    wait_text("log-lines", "late@example.com  IMAP login from 127.0.0.99")

    # The page's own session, but a request without the CSRF token: refused, nothing recorded.
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/run/stop', {method: 'POST', credentials: 'same-origin'}).then(r => done(r.status));")
    assert status == 403
    assert console.wired.app.run().state == "finishing"
