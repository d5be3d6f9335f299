"""Copying mailboxes from the old server to the new one: planned, batched, parallel, resumable, exactly once.

Exactly once rests on three rules:

1. A checkpoint (`FolderCopied`: source UIDVALIDITY + highest UID done, and
   the target's UIDVALIDITY + UIDNEXT at that moment) is recorded only after
   the target accepted every message up to it.
2. A resume copies source messages above the checkpoint, but first reads the
   fingerprints (Message-ID + size + SHA-256) of target messages from the
   checkpoint's UIDNEXT on: those were appended after the last checkpoint
   (killed between APPEND and record) and are matched, not copied again.
3. When a checkpoint cannot be trusted (source or target UIDVALIDITY changed,
   or no checkpoint), the whole target folder is fingerprinted instead.

Matching is by multiset: two identical messages on the source need two on the target.

With several nodes, a checkpoint also renews the node's lease on the account.
Before appending, a node whose last renewal is older than half the lease
records a checkpoint first: that renews the lease, or is refused (`LeaseLost`)
when another node has taken the account over, before anything is written.

Choices where the issue left room: messages flagged ``\\Deleted`` but not
expunged are copied with the flag (the user has not removed them yet, and the
new server expunges them as the old one would have); ``\\Recent`` is never
copied (it belongs to a session). A ``\\Noselect`` parent is not created: the
target gets it implicitly when its child is created, as on the source.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
import trio

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.imap.target import ImapTarget
from mailmigrator.adapters.mail.connection import LoginPlan, describe_error, is_transient
from mailmigrator.adapters.mail.message_source import (
    FetchedMessage,
    FolderListing,
    FolderTotals,
    MessageSource,
    SourceMessage,
)
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountBusy, ExplainedError, LeaseLost
from mailmigrator.domain.fingerprint import Fingerprint, fingerprint
from mailmigrator.domain.folders import FolderPlan, PlannedFolder, plan_folders

log = structlog.get_logger("mailmigrator.copier")

T = TypeVar("T")

SourceFactory = Callable[[LoginPlan], MessageSource]
TargetFactory = Callable[[LoginPlan], ImapTarget]


@dataclass(frozen=True)
class CopySettings:
    """How hard to push: batch sizes bound memory, connections bound the load on the old server."""

    exclude_folders: tuple[str, ...] = ()
    max_message_size: int = 0
    concurrency: int = 4
    connections_per_source_host: int = 8
    # Several nodes on one store: who copies, and how long its claim on an account lasts unrenewed.
    node: str = ""
    lease_seconds: float = 120.0
    # Fewer connections when the old server shows overload, more again when it recovers.
    adaptive_connections: bool = True
    folder_connections: int = 3
    batch_bytes: int = 4 * 1024 * 1024
    batch_messages: int = 250
    checkpoint_interval: float = 1.0
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0


@dataclass(frozen=True)
class AccountJob:
    """One account to copy: its normalised login and how to log in on each side."""

    login: str
    source: LoginPlan
    target: LoginPlan


@dataclass
class AccountResult:
    login: str
    ok: bool
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    folders: int = 0
    error: str | None = None
    # Another node holds the account's lease: this copy stopped without recording anything.
    busy: bool = False


@dataclass
class CopyProgress:
    """Counters for a progress display; updated from the copying tasks."""

    total_messages: int = 0
    total_bytes: int = 0
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    accounts_done: int = 0
    accounts_failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        """Start counting again from zero (a new batch of accounts)."""
        for name, value in vars(CopyProgress()).items():
            setattr(self, name, value)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.messages / elapsed
        byte_rate = self.bytes / elapsed
        left = max(self.total_bytes - self.bytes, 0)
        eta = f"{int(left / byte_rate) // 60}:{int(left / byte_rate) % 60:02d}" if byte_rate > 0 else "?"
        return (
            f"{self.messages:,}/{self.total_messages:,} messages, "
            f"{self.bytes / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB, "
            f"{rate:,.0f} msg/s, {byte_rate / 1e6:,.1f} MB/s, ETA {eta}"
            + (f", {self.skipped} skipped" if self.skipped else "")
        )


class AccountCopyFailed(ExplainedError):
    """Copying one account gave up; the message is the reason recorded."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass
class _FolderState:
    """The running checkpoint of one folder; deltas are what is not yet recorded."""

    folder: PlannedFolder
    uidvalidity: int
    highest_uid: int
    last_uidl: str
    target_uidvalidity: int
    target_uidnext: int
    messages: int = 0
    bytes: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    recorded_at: float = field(default_factory=time.monotonic)
    dirty: bool = False

    def checkpoint(self, done: bool) -> dict[str, Any]:
        return {
            "source_folder": self.folder.source,
            "target_folder": self.folder.target,
            "uidvalidity": self.uidvalidity,
            "highest_uid": self.highest_uid,
            "messages": self.messages,
            "bytes": self.bytes,
            "skipped": list(self.skipped),
            "done": done,
            "target_uidvalidity": self.target_uidvalidity,
            "target_uidnext": self.target_uidnext,
            "last_uidl": self.last_uidl,
        }


@dataclass
class _Batch:
    last: SourceMessage
    append: list[FetchedMessage]
    present_messages: int
    present_bytes: int
    skipped: list[dict[str, Any]]


def resume_point(
    listing: FolderListing, checkpoint: dict[str, Any] | None, target_uidvalidity: int
) -> tuple[list[SourceMessage], int, bool]:
    """The source messages still to copy, the first target UID to fingerprint, and whether the checkpoint held."""
    if checkpoint is None or checkpoint.get("target_uidvalidity") != target_uidvalidity:
        return list(listing.messages), 1, False
    if listing.by_uidl:
        marker = checkpoint.get("last_uidl") or ""
        positions = {m.uidl: i for i, m in enumerate(listing.messages)}
        if marker not in positions:
            return list(listing.messages), 1, False
        return listing.messages[positions[marker] + 1:], int(checkpoint.get("target_uidnext") or 1), True
    if checkpoint.get("uidvalidity") != listing.uidvalidity:
        return list(listing.messages), 1, False
    highest = int(checkpoint.get("highest_uid") or 0)
    pending = [m for m in listing.messages if m.uid > highest]
    return pending, int(checkpoint.get("target_uidnext") or 1), True


def batches(messages: Iterable[SourceMessage], max_bytes: int, max_messages: int) -> Iterable[list[SourceMessage]]:
    """Consecutive runs of messages bounded by total size and count (one big message is a batch of one)."""
    batch: list[SourceMessage] = []
    held = 0
    for message in messages:
        if batch and (held + message.size > max_bytes or len(batch) >= max_messages):
            yield batch
            batch, held = [], 0
        batch.append(message)
        held += message.size
    if batch:
        yield batch


def pipelined_batches(
    messages: Sequence[SourceMessage], max_bytes: int, max_messages: int, ramp: int = 8
) -> list[list[SourceMessage]]:
    """Like `batches`, but the first and the last batch are at most 1/`ramp` of the limits.

    A folder's appending starts when its first batch is fetched and ends with its
    last append; small batches at both ends shorten the time either side waits.
    """
    small_bytes, small_messages = max(max_bytes // ramp, 1), max(max_messages // ramp, 1)
    first = next(iter(batches(messages, small_bytes, small_messages)), [])
    out = [first] if first else []
    body = list(batches(messages[len(first):], max_bytes, max_messages))
    if body:
        last = body.pop()
        held, start = 0, len(last)
        while start > 0 and len(last) - start < small_messages and held + last[start - 1].size <= small_bytes:
            start -= 1
            held += last[start].size
        out += body
        out += [last[:start], last[start:]] if 0 < start < len(last) else [last]
    return out


def _first_cause(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


class MailboxCopier:
    """Copies accounts with bounded parallelism, recording progress through `MigrationService`."""

    def __init__(
        self,
        service: MigrationService,
        open_source: SourceFactory,
        open_target: TargetFactory,
        source_limit: AdaptiveLimit,
        settings: CopySettings | None = None,
        progress: CopyProgress | None = None,
    ) -> None:
        self.service = service
        self.open_source = open_source
        self.open_target = open_target
        self.settings = settings or CopySettings()
        self.progress = progress or CopyProgress()
        # One limit per old server and node: every open source connection holds a token.
        self.source_limit = source_limit
        self.source_limiter = self.source_limit.limiter
        self.source_host = source_limit.host
        # The event store is written from one thread at a time.
        self.store_limiter = trio.CapacityLimiter(1)
        # Per account being copied: this node's monotonic clock just before its last lease event was saved.
        self.lease_renewed: dict[str, float] = {}

    async def _store(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self.store_limiter)

    async def copy_accounts(self, jobs: Sequence[AccountJob]) -> list[AccountResult]:
        """Copy every job, at most `concurrency` accounts at a time; one failure does not stop the others."""
        results: list[AccountResult] = []
        slots = trio.Semaphore(self.settings.concurrency)

        async def one(job: AccountJob) -> None:
            async with slots:
                results.append(await self.copy_account(job))

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
        return results

    async def copy_account(self, job: AccountJob) -> AccountResult:
        """Plan, record the start, copy every folder, and record completion or failure."""
        try:
            return await self._copy_account(job)
        finally:
            self.lease_renewed.pop(job.login, None)

    async def _copy_account(self, job: AccountJob) -> AccountResult:
        started = time.monotonic()
        try:
            account = await self._store(lambda: self.service.account(job.login))
            checkpoints = {name: dict(cp) for name, cp in account.folders.items()}
            plan, counts = await self._with_retries(job, "planning", lambda: self._plan(job))
            total_messages = sum(n for n, _ in counts.values())
            total_bytes = sum(b for _, b in counts.values())
            planned = [
                {"source": f.source, "target": f.target, "messages": counts.get(f.source, (0, 0))[0],
                 "bytes": counts.get(f.source, (0, 0))[1]}
                for f in plan.folders
            ]
            await self._renew_lease(job.login, lambda: self.service.record_migration_started(
                job.login, planned, total_messages, total_bytes,
                node=self.settings.node, now=datetime.now(timezone.utc), lease_seconds=self.settings.lease_seconds))
            self.progress.total_messages += total_messages
            self.progress.total_bytes += total_bytes
            for f in plan.folders:
                cp = checkpoints.get(f.source)
                if cp is not None:
                    self.progress.messages += int(cp.get("messages", 0))
                    self.progress.bytes += int(cp.get("bytes", 0))
            await self._copy_folders(job, plan, checkpoints, counts)
        except (AccountBusy, LeaseLost) as e:
            log.info("account held by another node", login=job.login, detail=str(e))
            return AccountResult(job.login, ok=False, error=str(e), busy=True)
        except AccountCopyFailed as e:
            reason, retryable = str(e), e.retryable
            await self._store(lambda: self.service.record_failed(
                job.login, reason, retryable, node=self.settings.node))
            self.progress.accounts_failed += 1
            log.warning("account copy failed", login=job.login, reason=str(e), retryable=e.retryable)
            return AccountResult(job.login, ok=False, error=str(e))
        account = await self._store(lambda: self.service.account(job.login))
        folders = account.folders
        messages = sum(int(f["messages"]) for f in folders.values())
        size = sum(int(f["bytes"]) for f in folders.values())
        skipped = sum(int(f["skipped"]) for f in folders.values())
        duration = time.monotonic() - started
        try:
            await self._store(lambda: self.service.record_completed(
                job.login, messages, size, len(plan.folders), duration, False, node=self.settings.node))
        except LeaseLost as e:
            return AccountResult(job.login, ok=False, error=str(e), busy=True)
        self.progress.accounts_done += 1
        return AccountResult(job.login, True, messages, size, skipped, len(plan.folders))

    async def _with_retries(self, job: AccountJob, what: str, step: Callable[[], Any]) -> Any:
        s = self.settings
        for attempt in range(1, s.retries + 1):
            try:
                async with self.source_limiter:
                    result = await step()
                self.source_limit.succeeded()
                return result
            except Exception as e:  # noqa: BLE001 - classified below
                cause = _first_cause(e)
                if isinstance(cause, (AccountCopyFailed, LeaseLost, AccountBusy)):
                    raise cause from None
                self.source_limit.failed(cause)
                if not is_transient(cause) or attempt == s.retries:
                    raise AccountCopyFailed(
                        f"{what}: {describe_error(cause)}" + (f" (after {attempt} tries)" if attempt > 1 else ""),
                        retryable=is_transient(cause),
                    ) from None
                log.warning("transient failure, retrying", login=job.login, step=what, attempt=attempt,
                            error=describe_error(cause))
                await trio.sleep(min(s.backoff * 2 ** (attempt - 1), s.max_backoff))
                await self.source_limit.wait_backoff()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _plan(self, job: AccountJob) -> tuple[FolderPlan, dict[str, tuple[int, int]]]:
        """List both sides, map the folders, create them on the target and subscribe; count what is to copy."""

        def work() -> tuple[FolderPlan, dict[str, tuple[int, int]]]:
            source = self.open_source(job.source)
            target: ImapTarget | None = None
            try:
                target = self.open_target(job.target)
                plan = plan_folders(
                    source.list_folders(), source.namespace(), target.namespace(), target.special_use(),
                    self.settings.exclude_folders,
                )
                counts: dict[str, tuple[int, int]] = {}
                for folder in plan.folders:
                    if folder.selectable:
                        # One STATUS per folder when offered; the folder worker lists the messages anyway.
                        totals = source.folder_totals(folder.source) if isinstance(source, FolderTotals) else None
                        if totals is None:
                            listing = source.open_folder(folder.source)
                            totals = (len(listing.messages), sum(m.size for m in listing.messages))
                        counts[folder.source] = totals
                for folder in sorted(plan.folders, key=lambda f: len(f.path)):
                    if folder.selectable:
                        target.ensure_folder(folder.target)
                subscribed = {name for f in target.list_folders() if f.subscribed for name in [f.name]}
                for folder in plan.folders:
                    if folder.subscribed and folder.target not in subscribed:
                        target.subscribe(folder.target)
                return plan, counts
            finally:
                source.close()
                if target is not None:
                    target.close()

        plan, counts = await trio.to_thread.run_sync(work)
        for excluded in plan.excluded:
            log.info("folder excluded", login=job.login, folder=excluded.source, pattern=excluded.pattern)
        return plan, counts

    async def _copy_folders(
        self,
        job: AccountJob,
        plan: FolderPlan,
        checkpoints: dict[str, dict[str, Any]],
        counts: dict[str, tuple[int, int]],
    ) -> None:
        todo = sorted((f for f in plan.folders if f.selectable), key=lambda f: -counts.get(f.source, (0, 0))[1])
        send, receive = trio.open_memory_channel[PlannedFolder](len(todo))
        for folder in todo:
            send.send_nowait(folder)
        send.close()
        workers = max(1, min(self.settings.folder_connections, len(todo)))
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(self._folder_worker, job, receive.clone(), checkpoints)
        except BaseExceptionGroup as group:
            cause = _first_cause(group)
            if isinstance(cause, (AccountCopyFailed, LeaseLost)):
                raise cause from None
            raise

    async def _folder_worker(
        self,
        job: AccountJob,
        folders: trio.MemoryReceiveChannel[PlannedFolder],
        checkpoints: dict[str, dict[str, Any]],
    ) -> None:
        s = self.settings
        source: MessageSource | None = None
        target: ImapTarget | None = None
        async with folders, self.source_limiter:
            try:
                async for folder in folders:
                    for attempt in range(1, s.retries + 1):
                        state: list[_FolderState] = []
                        try:
                            if source is None:
                                source = await trio.to_thread.run_sync(self.open_source, job.source)
                            if target is None:
                                target = await trio.to_thread.run_sync(self.open_target, job.target)
                            await self._copy_folder(job, folder, source, target, checkpoints, state)
                            self.source_limit.succeeded()
                            break
                        except Exception as e:  # noqa: BLE001 - classified below
                            cause = _first_cause(e)
                            if isinstance(cause, LeaseLost):
                                # Another node took the account over: stop writing, record nothing.
                                raise cause from None
                            self.source_limit.failed(cause)
                            if state and state[0].dirty:
                                await self._record(job, state[0], done=False, checkpoints=checkpoints)
                            await _close(source, target)
                            source = target = None
                            if not is_transient(cause) or attempt == s.retries:
                                raise AccountCopyFailed(
                                    f'folder "{folder.source}": {describe_error(cause)}'
                                    + (f" (after {attempt} tries)" if attempt > 1 else ""),
                                    retryable=is_transient(cause),
                                ) from None
                            log.warning("transient failure, reconnecting", login=job.login,
                                        folder=folder.source, attempt=attempt, error=describe_error(cause))
                            await trio.sleep(min(s.backoff * 2 ** (attempt - 1), s.max_backoff))
                            await self.source_limit.wait_backoff()
            finally:
                with trio.CancelScope(shield=True):
                    await _close(source, target)

    async def _renew_lease(self, login: str, save: Callable[[], None]) -> None:
        """Save a lease event of this node; its lease now runs from no later than just before the save."""
        before = time.monotonic()
        await self._store(save)
        self.lease_renewed[login] = max(before, self.lease_renewed.get(login, before))

    def _lease_half_gone(self, login: str) -> bool:
        renewed = self.lease_renewed.get(login)
        return renewed is None or time.monotonic() - renewed > self.settings.lease_seconds / 2

    async def _record(
        self, job: AccountJob, state: _FolderState, *, done: bool, checkpoints: dict[str, dict[str, Any]]
    ) -> None:
        checkpoint = state.checkpoint(done)
        await self._renew_lease(
            job.login, lambda: self.service.record_folder_copied(job.login, node=self.settings.node, **checkpoint))
        previous = checkpoints.get(state.folder.source)
        merged = dict(checkpoint)
        if previous is not None and previous.get("uidvalidity") == state.uidvalidity:
            merged["messages"] = int(previous.get("messages", 0)) + state.messages
            merged["bytes"] = int(previous.get("bytes", 0)) + state.bytes
        checkpoints[state.folder.source] = merged
        state.messages, state.bytes, state.skipped = 0, 0, []
        state.recorded_at = time.monotonic()
        state.dirty = False

    async def _copy_folder(
        self,
        job: AccountJob,
        folder: PlannedFolder,
        source: MessageSource,
        target: ImapTarget,
        checkpoints: dict[str, dict[str, Any]],
        state_out: list[_FolderState],
    ) -> None:
        s = self.settings
        listing = await trio.to_thread.run_sync(source.open_folder, folder.source)
        target_uidvalidity, target_uidnext = await trio.to_thread.run_sync(target.status, folder.target)
        checkpoint = checkpoints.get(folder.source)
        pending, from_uid, held = resume_point(listing, checkpoint, target_uidvalidity)
        if held and not pending and checkpoint and checkpoint.get("done"):
            return
        state = _FolderState(
            folder,
            uidvalidity=listing.uidvalidity,
            highest_uid=int(checkpoint["highest_uid"]) if held and checkpoint else 0,
            last_uidl=str(checkpoint.get("last_uidl", "")) if held and checkpoint else "",
            target_uidvalidity=target_uidvalidity,
            target_uidnext=target_uidnext,
        )
        state_out.append(state)
        present: Counter[Fingerprint] = Counter()
        if pending and target_uidnext > from_uid:
            present = Counter(await trio.to_thread.run_sync(
                lambda: list(target.fingerprints(folder.target, from_uid, s.batch_bytes))))
            if present:
                log.info("matching by fingerprint", login=job.login, folder=folder.source,
                         target_messages=sum(present.values()), checkpoint_held=held)

        send, receive = trio.open_memory_channel[_Batch](0)

        async def produce() -> None:
            async with send:
                for group in pipelined_batches(pending, s.batch_bytes, s.batch_messages):
                    skipped = []
                    wanted = []
                    for message in group:
                        if s.max_message_size and message.size > s.max_message_size:
                            skipped.append({"uid": message.uid, "size": message.size,
                                            "reason": f"larger than max_message_size "
                                                      f"({message.size:,} > {s.max_message_size:,} bytes)"})
                        else:
                            wanted.append(message)
                    fetched = await trio.to_thread.run_sync(source.fetch, wanted)
                    append, present_messages, present_bytes = [], 0, 0
                    for message in fetched:
                        if present:
                            fp = fingerprint(message.raw)
                            if present[fp] > 0:
                                present[fp] -= 1
                                present_messages += 1
                                present_bytes += len(message.raw)
                                continue
                        append.append(message)
                    await send.send(_Batch(group[-1], append, present_messages, present_bytes, skipped))

        async def consume() -> None:
            async with receive:
                async for batch in receive:
                    outcome = None
                    if batch.append:
                        if self._lease_half_gone(job.login):
                            # A slow fetch or a retry's backoff outlasted half the lease: renew it
                            # (or learn it was taken over) before writing to the new server.
                            await self._record(job, state, done=False, checkpoints=checkpoints)
                        outcome = await trio.to_thread.run_sync(target.append, folder.target, batch.append)
                    state.highest_uid = batch.last.uid
                    state.last_uidl = batch.last.uidl
                    accepted = outcome.accepted if outcome else []
                    copied = len(accepted) + batch.present_messages
                    size = sum(len(m.raw) for m in accepted) + batch.present_bytes
                    state.messages += copied
                    state.bytes += size
                    state.skipped.extend(batch.skipped)
                    if outcome is not None:
                        state.skipped.extend({"uid": m.uid, "size": len(m.raw), "reason": reason}
                                             for m, reason in outcome.refused)
                        if outcome.uidnext:
                            state.target_uidvalidity = outcome.uidvalidity or state.target_uidvalidity
                            state.target_uidnext = outcome.uidnext
                    state.dirty = True
                    self.progress.messages += copied
                    self.progress.bytes += size
                    skipped_now = len(batch.skipped) + (len(outcome.refused) if outcome else 0)
                    self.progress.skipped += skipped_now
                    if time.monotonic() - state.recorded_at >= s.checkpoint_interval:
                        await self._record(job, state, done=False, checkpoints=checkpoints)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(consume)
        await self._record(job, state, done=True, checkpoints=checkpoints)


async def _close(source: MessageSource | None, target: ImapTarget | None) -> None:
    for connection in (source, target):
        if connection is not None:
            await trio.to_thread.run_sync(connection.close)
