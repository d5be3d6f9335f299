"""The post-migrate script: run as `SCRIPT EMAIL` after each migrated account, the password handed over privately.

How the password arrives (`PASSWORD_HANDOVERS`): "stdin", one line on its
standard input (nothing another user can see); "env", the variable
MAILMIGRATOR_PASSWORD (readable in /proc only by the same uid); "argv", the
contract's `SCRIPT EMAIL PASSWORD`, where every local user sees it in `ps`.
Executed directly, never through a shell, so a password with spaces or quotes
arrives intact. Its output is kept for the structured log with the password
cut out; a script that hangs is killed when its timeout ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trio

OUTPUT_LIMIT = 64 * 1024
PASSWORD_HANDOVERS = ("stdin", "env", "argv")
PASSWORD_VARIABLE = "MAILMIGRATOR_PASSWORD"


@dataclass(frozen=True)
class ScriptOutcome:
    """How one run of the script ended."""

    exit_status: int
    duration_seconds: float
    timed_out: bool
    stdout: str
    stderr: str


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


class PostMigrateScript:
    """One configured script, with its timeout."""

    def __init__(self, path: Path, timeout: float, password_handover: str = "stdin") -> None:
        if password_handover not in PASSWORD_HANDOVERS:
            raise ValueError(f"password_handover must be one of {PASSWORD_HANDOVERS}")
        self.path = path
        self.timeout = timeout
        self.password_handover = password_handover

    async def run(self, email: str, password: str) -> ScriptOutcome:
        """Run the script for one account; never raises for the script's own failure."""
        started = time.monotonic()
        argv = [str(self.path), email] + ([password] if self.password_handover == "argv" else [])
        env = {**os.environ, PASSWORD_VARIABLE: password} if self.password_handover == "env" else None
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE if self.password_handover == "stdin" else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            return ScriptOutcome(127, time.monotonic() - started, False, "", f"cannot run {self.path}: {e.strerror}")
        out: list[bytes] = []
        err: list[bytes] = []
        timed_out = False
        try:
            with trio.move_on_after(self.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    assert process.stdout is not None and process.stderr is not None
                    nursery.start_soon(_collect, process.stdout, out)
                    nursery.start_soon(_collect, process.stderr, err)
                    if process.stdin is not None:
                        nursery.start_soon(_hand_over, process.stdin, password)
                    await process.wait()
            if scope.cancelled_caught:
                timed_out = True
        finally:
            if process.returncode is None:
                # The whole process group: a script's children must not outlive it.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                with trio.CancelScope(shield=True):
                    await process.wait()
        return ScriptOutcome(
            exit_status=process.returncode if process.returncode is not None else -9,
            duration_seconds=round(time.monotonic() - started, 3),
            timed_out=timed_out,
            stdout=redact(b"".join(out).decode(errors="replace"), password),
            stderr=redact(b"".join(err).decode(errors="replace"), password),
        )


async def _collect(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    size = 0
    async for chunk in stream:
        if size < OUTPUT_LIMIT:
            into.append(bytes(chunk[: OUTPUT_LIMIT - size]))
        size += len(chunk)


async def _hand_over(stream: trio.abc.SendStream, password: str) -> None:
    """The password as one line, then end of input; a script that does not read it is no failure."""
    try:
        await stream.send_all(password.encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()
