"""How many connections `serve` may hold within the process's open-file limit (RLIMIT_NOFILE).

Each client connection is one file descriptor, two once it is relayed to a
backend; the store, the console, the copy engine and the listeners need a few
hundred more. `serve` raises the soft limit to the hard one when the
connections need it, and refuses a `[proxy] max_connections` that even the
hard limit cannot hold; the default is lowered to fit instead.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from mailmigrator.ops.config import Config, ConfigError

# Descriptors kept for everything but client and backend connections.
RESERVED_FILES = 512


@dataclass(frozen=True)
class OpenFilePlan:
    """What `serve` does about the open-file limit: the soft limit to set and the connection cap that fits."""

    soft: int
    hard: int
    raise_soft_to: int | None
    max_connections: int
    lowered_from: int | None
    relayed_fit: int


def plan_open_files(max_connections: int, explicit: bool, soft: int, hard: int) -> OpenFilePlan:
    """Decide for `max_connections` (set in the config when `explicit`) under the limits `soft` and `hard`.

    `ConfigError` when an explicit cap is more than the hard limit can hold, even before login.
    """
    wanted = 2 * max_connections + RESERVED_FILES
    unlimited = hard == resource.RLIM_INFINITY
    raise_to = None
    if soft != resource.RLIM_INFINITY and soft < wanted and (unlimited or soft < hard):
        raise_to = wanted if unlimited else hard
    limit = (raise_to or soft) if soft != resource.RLIM_INFINITY else wanted
    fits = max(0, limit - RESERVED_FILES)
    lowered_from = None
    if max_connections > fits:
        if explicit:
            raise ConfigError(
                f"[proxy] max_connections = {max_connections} needs at least {max_connections + RESERVED_FILES} "
                f"open files, and this process may open {limit} (ulimit -n, systemd LimitNOFILE=); "
                f"set max_connections to at most {fits} or raise the limit")
        lowered_from, max_connections = max_connections, fits
    return OpenFilePlan(soft, hard, raise_to, max_connections, lowered_from, max(0, (limit - RESERVED_FILES) // 2))


def fit_open_files(config: Config) -> OpenFilePlan:
    """Apply `plan_open_files` to this process: raise its soft limit if planned; the plan says what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proxy = config.proxy
    plan = plan_open_files(proxy.max_connections, "max_connections" in proxy.model_fields_set, soft, hard)
    if plan.raise_soft_to is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.raise_soft_to, hard))
    return plan
