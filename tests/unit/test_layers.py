"""The folder tree is the architecture: each layer imports only what lies beneath it.

- The domain model (`domain/*.py` but the service layer) imports only the standard library,
  `eventsourcing.domain` and itself: no I/O library, no clock, no adapter.
- The service layer (`domain/application.py`, `domain/use_cases/`) may use trio, structlog and stamina
  and the eventsourcing application, but never an adapter, a projection or ops: it reaches the world
  only through the ports in `domain/use_cases/ports.py`.
- Adapters never import ops; projections never import adapters other than the store or ops.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_LAYER = {"application.py"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("path", [p for p in modules("domain") if p.parent.name == "domain"
                                  and p.name not in SERVICE_LAYER], ids=lambda p: p.name)
def test_the_domain_model_imports_only_the_standard_library_and_eventsourcing_domain(path: Path) -> None:
    foreign = {n for n in imported(path)
               if not (is_stdlib(n) or n == "eventsourcing.domain" or n.startswith("mailmigrator.domain."))}
    assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"
    service = {n for n in imported(path) if n.startswith("mailmigrator.domain.use_cases")
               or n == "mailmigrator.domain.application"}
    assert not service, f"{path.relative_to(ROOT)} reaches up into the service layer: {sorted(service)}"


@pytest.mark.parametrize("path", [p for p in modules("domain") if p.parent.name == "use_cases"
                                  or p.name in SERVICE_LAYER], ids=lambda p: p.name)
def test_the_service_layer_reaches_the_world_only_through_ports(path: Path) -> None:
    allowed_libraries = ("trio", "structlog", "stamina", "eventsourcing")
    foreign = {n for n in imported(path) if not (is_stdlib(n) or n.startswith("mailmigrator.domain")
                                                 or n.split(".")[0] in allowed_libraries)}
    assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"
    sockets = {n for n in imported(path) if n.split(".")[0] in ("socket", "ssl", "imaplib", "poplib", "subprocess")}
    assert not sockets, f"{path.relative_to(ROOT)} touches the world directly: {sorted(sockets)}"


@pytest.mark.parametrize("path", modules("adapters"), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_never_call_back_into_ops_or_projections(path: Path) -> None:
    upward = {n for n in imported(path) if n.startswith(("mailmigrator.ops", "mailmigrator.projections"))}
    assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"


@pytest.mark.parametrize("path", modules("projections"), ids=lambda p: p.name)
def test_projections_read_events_and_their_own_tables_only(path: Path) -> None:
    upward = {n for n in imported(path) if n.startswith("mailmigrator.ops")
              or (n.startswith("mailmigrator.adapters") and not n.startswith("mailmigrator.adapters.store"))}
    assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"
