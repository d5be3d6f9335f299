"""The migration manager console: a web page, a JSON API and /metrics, served by `serve`."""

from mailmigrator.ops.console.server import build_console, run_console

__all__ = ["build_console", "run_console"]
