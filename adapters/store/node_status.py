"""What each running `serve` node reports about itself: a heartbeat row, not an event.

The adaptive connection limit lives in the node's memory; `status` runs in
another process, so each node writes its current figures here every few seconds.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from mailmigrator.adapters.store.sql_tables import SqlTables, create_tables_racing


class NodeStatusTable(SqlTables):
    """One row per node: its name, when it last reported, and what it reported."""

    @classmethod
    def open(cls, factory: Any) -> NodeStatusTable:
        table: NodeStatusTable = cls.on(factory)
        create_tables_racing(table.create_table)
        return table

    def create_table(self) -> None:
        with self._cursor(commit=True) as c:
            c.execute(self.sql(
                "CREATE TABLE IF NOT EXISTS {p}mm_nodes (node TEXT PRIMARY KEY, reported_at TEXT NOT NULL, doc TEXT NOT NULL)"
            ))

    def report(self, node: str, doc: dict[str, Any], now: datetime) -> None:
        with self._cursor(commit=True) as c:
            c.execute(
                self.sql("INSERT INTO {p}mm_nodes (node, reported_at, doc) VALUES (%s, %s, %s) "
                         "ON CONFLICT (node) DO UPDATE SET reported_at = excluded.reported_at, doc = excluded.doc"),
                (node, now.isoformat(), json.dumps(doc, sort_keys=True)),
            )

    def nodes(self) -> list[dict[str, Any]]:
        """Every node's last report, with `node` and `reported_at`, by name."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT node, reported_at, doc FROM {p}mm_nodes ORDER BY node"))
            rows = c.fetchall()
        return [{"node": r["node"], "reported_at": r["reported_at"], **json.loads(r["doc"])} for r in rows]


def describe_node(report: dict[str, Any], now: datetime | None = None) -> str:
    """One status line for a node's report."""
    now = now or datetime.now(timezone.utc)
    age = (now - datetime.fromisoformat(report["reported_at"])).total_seconds()
    limit = report.get("source_limit") or {}
    sign = f", last overload sign: {limit['last_sign']}" if limit.get("last_sign") else ""
    return (f"node {report['node']}: {report.get('migrating', 0)} migrating, old-server connections "
            f"{limit.get('limit', '?')}/{limit.get('ceiling', '?')} (in use {limit.get('in_use', 0)}{sign}), "
            f"reported {age:.0f} s ago")
