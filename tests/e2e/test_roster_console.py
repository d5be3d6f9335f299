"""The console's progress bar counts against the roster, in a real headless chromium."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from browser import browser  # noqa: E402,F401  (fixture)
from console_fixtures import ADMIN_PASSWORD  # noqa: E402
from test_console_browser import ConsoleThread  # noqa: E402
from test_roster import roster_of_30  # noqa: E402
import testbed  # noqa: E402

from mailmigrator.ops.config import load_config  # noqa: E402

pytestmark = pytest.mark.dovecot


def test_console_shows_10_of_30_roster_accounts_done_and_20_not_seen(
    browser: Any, old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    config_path, _, _ = roster_of_30(old_server, new_server, tmp_path, capsys, monkeypatch)
    with ConsoleThread(tmp_path, load_config(config_path)) as console:
        wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(console.url + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "login-password"))).send_keys(ADMIN_PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        expected = "10 of 30 roster accounts done (0 in progress, 0 failed, 20 not seen yet)"
        wait.until(lambda d: expected in d.find_element(By.ID, "progress-text").text,
                   f"{expected!r} never appeared in #progress-text")
        width = browser.execute_script("return document.getElementById('progress-fill').style.width")
        assert width == "33.3%"
        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=accounts]").click()
        wait.until(lambda d: "expected 20" in d.find_element(By.ID, "state-counts").text)
