"""The HTML report in a real headless chromium: the table, the totals and the chart render from the file alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from browser import browser  # noqa: E402,F401  (fixture)
from console_fixtures import console_config, open_wired  # noqa: E402

from mailmigrator.ops.cli import main  # noqa: E402
from mailmigrator.ops.report import COLUMNS  # noqa: E402

SCREENSHOT = Path(os.environ["REPORT_SCREENSHOT"]) if os.environ.get("REPORT_SCREENSHOT") else None


def test_html_report_renders_rows_totals_and_chart(browser: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    config = console_config(tmp_path)
    wired = open_wired(config)
    app = wired.app
    done = [f"user{n}@example.com" for n in range(6)]
    app.record_expected([*done, "late@example.com", "<b>odd</b>@example.com"], "roster.txt")
    for n, login in enumerate(done):
        app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
        app.record_password_verified(login, "imap-login")
        app.record_account_created(login, login, [], "passwd-file")
        app.record_migration_started(login, [{"source": "INBOX", "target": "INBOX", "messages": 10 + n}],
                                     10 + n, (10 + n) * 50_000)
        app.record_folder_copied(login, source_folder="INBOX", target_folder="INBOX", uidvalidity=1,
                                 highest_uid=10 + n, messages=10 + n, bytes=(10 + n) * 50_000,
                                 skipped=[{"uid": 99, "reason": "too large"}] if n == 0 else [], done=True)
        app.record_completed(login, 10 + n, (10 + n) * 50_000, 1, 2.0, False)
        app.record_comparison(login, n != 1, 0 if n != 1 else 2, [], "node-a")
    wired.close()

    page = tmp_path / "report.html"
    assert main(["--config", str(tmp_path / "mm.toml"), "report", "--out", str(page)]) == 0, capsys.readouterr()
    assert "<script" not in page.read_text() and "http" not in page.read_text().replace(
        "http://www.w3.org/2000/svg", "")  # no external asset, nothing that runs

    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")
    assert len(rows) == 8
    assert browser.find_element(By.ID, "totals").text == "8 account(s): completed: 6, expected: 2"
    assert "MB/s" in browser.find_element(By.ID, "throughput").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#per-hour rect.bar")
    assert bars and all(bar.size["height"] > 0 for bar in bars)
    cells = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td") for row in rows}
    assert "<b>odd</b>@example.com" in cells  # shown as text, not markup
    assert cells["user0@example.com"][COLUMNS.index("skipped_reasons")].text == "too large: 1"
    if SCREENSHOT:
        browser.set_window_size(1400, 700)
        browser.save_screenshot(str(SCREENSHOT))
