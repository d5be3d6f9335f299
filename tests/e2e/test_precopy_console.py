"""A pre-copied account in the console, in a real headless chromium: what was copied, how old, and that nobody can
use it before its owner logs in."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from browser import browser  # noqa: E402,F401  (fixture)
from console_fixtures import ADMIN_PASSWORD  # noqa: E402
from copy_testbed import run_cli  # noqa: E402
from test_console_browser import ConsoleThread  # noqa: E402
from test_operator_flow import account  # noqa: E402
from test_precopy import admin_config, put_on_roster  # noqa: E402
import testbed  # noqa: E402

from mailmigrator.ops.config import load_config  # noqa: E402

pytestmark = pytest.mark.dovecot


def test_a_precopied_account_shows_its_copy_its_age_and_that_it_waits_for_its_owner(
    browser: Any, old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    config = admin_config(tmp_path, old_server, new_server)
    login, _ = account(old_server, messages=7)
    put_on_roster(config, [login])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "precopy", login)
    assert code == 0, out + err

    with ConsoleThread(tmp_path, load_config(config)) as console:
        wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(console.url + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "login-password"))).send_keys(ADMIN_PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "nav button[data-tab=accounts]"))).click()
        wait.until(lambda d: "precopied 1" in d.find_element(By.ID, "state-counts").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-login='{login}']"))
        browser.find_element(By.CSS_SELECTOR, f"tr[data-login='{login}']").click()
        wait.until(lambda d: "pre-copied" in d.find_element(By.ID, "detail-summary").text)
        rows = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
                for r in browser.find_elements(By.CSS_SELECTOR, "#detail-summary tr")}
    copied = rows["pre-copied"]
    assert copied.startswith("7 messages, ") and " MB; copy as of " in copied, copied
    assert " s old)" in copied and copied.endswith("; unusable until the owner logs in"), copied
    assert rows["state"] == "precopied"
