"""Service wiring: configuration in, a ready application and its views out."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from eventsourcing.persistence import PersistenceError

from mailmigrator.adapters.store.sql_tables import is_creation_race
from mailmigrator.adapters.store.event_store import (
    StoreError,
    check_store,
    parse_store_url,
    read_key_file,
    store_environment,
)
from mailmigrator.domain.application import MigrationService
from mailmigrator.ops.config import Config
from mailmigrator.projections.follower import MigrationViews

CREATE_RACE_RETRIES = 5


@dataclass
class Wired:
    """The application service and the read models over one store."""

    app: MigrationService
    views: MigrationViews

    def close(self) -> None:
        self.app.close()


def open_store(config: Config, *, create: bool) -> Wired | None:
    """Open the event store named by the config.

    Without `create`, an SQLite file that does not exist yet gives None
    (nothing is recorded) and nothing is written.
    """
    location = parse_store_url(config.store.url, config.base_dir)
    exists = check_store(location, must_exist=False, lock_timeout=config.store.lock_timeout)
    if not exists and not create:
        return None
    key = read_key_file(config.store.encryption_key_file) if config.store.encryption_key_file else None
    env = store_environment(location, key, config.store.lock_timeout)
    for attempt in range(1, CREATE_RACE_RETRIES + 1):
        app: MigrationService | None = None
        try:
            app = MigrationService(env=env)
            views = MigrationViews(app, log_file=config.migration.log_file)
        except PersistenceError as e:
            if app is not None:
                app.close()
            # Nodes starting together on an empty PostgreSQL database race to create the
            # same tables; CREATE ... IF NOT EXISTS is not atomic there. The loser retries.
            if attempt < CREATE_RACE_RETRIES and _is_creation_race(e):
                time.sleep(random.uniform(0.1, 0.5))
                continue
            raise StoreError(f"cannot open {location.describe()}: {_first_line(e)}") from None
        return Wired(app=app, views=views)
    raise AssertionError("unreachable")


def _is_creation_race(error: Exception) -> bool:
    return is_creation_race(error)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def log_file_of(config: Config) -> Path | None:
    return config.migration.log_file
