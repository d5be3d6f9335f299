"""The built wheel installs everything under `mailmigrator.` and nothing generic at the top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_only_the_mailmigrator_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mailmigrator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailmigrator"}
    for package in ("domain", "adapters", "projections", "ops"):
        assert f"mailmigrator/{package}/__init__.py" in names
    assert "mailmigrator/ops/cli.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mailmigrator = mailmigrator.ops.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
