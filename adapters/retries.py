"""Trying a step again under a `RetryPolicy`, with stamina (which sleeps with trio's clock under trio).

    async for attempt in retrying(CONNECTION_RETRIES, on=is_transient):
        with attempt:
            ...

A failure `on` accepts is swallowed and tried again after the policy's wait,
unless it was the last attempt; any other failure, and the last one, propagate.
`attempt.num` counts from 1.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

import stamina

from mailmigrator.domain.retries import RetryPolicy


def retrying(policy: RetryPolicy, *, on: Callable[[Exception], bool]) -> AsyncIterable[stamina.Attempt]:
    """The attempts `policy` allows, retrying the failures for which `on` is true."""
    return stamina.retry_context(
        on=on,
        attempts=policy.attempts,
        timeout=policy.timeout,
        wait_initial=policy.first_wait,
        wait_max=policy.max_wait,
        # No random extra: a policy waits exactly what it says, so its waits can be reasoned about and tested.
        wait_jitter=0.0,
        wait_exp_base=2,
    )
