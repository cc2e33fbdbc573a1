"""Commands vramwatch runs: a tenant's ``release`` argv and the ``after_action`` hook.

Both are argv lists run without a shell, with a time limit, stdin closed and
their output captured (cut to ``OUTPUT_MAX_BYTES``) for the journal. Nothing
here raises: a command that cannot start, fails or overruns is a result.

``release`` runs in the loop (the action waits for it, as it waits for a
systemd job). Hooks never delay guarding: each starts in the background and
is reaped on later ticks; at most ``HOOKS_MAX`` run at once, more are
dropped and counted, and one that overruns its time limit is killed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Enough output for an error message, not enough to flood the journal.
OUTPUT_MAX_BYTES = 2048
# Hooks in flight at once; beyond it a hook is skipped (and the skip is logged).
HOOKS_MAX = 4
# A minimal environment: PATH for the command's own children, nothing inherited.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    returncode: int | None  # None: did not start, or killed at the time limit
    output: str  # stdout and stderr, cut to OUTPUT_MAX_BYTES
    problem: str  # "" when ok; else one sentence: why it failed
    duration_s: float


def _cut(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    if len(text) > OUTPUT_MAX_BYTES:
        text = text[:OUTPUT_MAX_BYTES] + "… (cut)"
    return text


def run(
    argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run ``argv`` to completion or its time limit; never raises."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            env=dict(BASE_ENV, **(env or {})),
            close_fds=True,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return CommandResult(
            False,
            None,
            _cut(exc.output or b""),
            f"still running after {timeout_s:g}s: killed",
            time.monotonic() - started,
        )
    except OSError as exc:
        return CommandResult(False, None, "", f"cannot run {argv[0]}: {exc.strerror or exc}", 0.0)
    took = time.monotonic() - started
    output = _cut(done.stdout or b"")
    if done.returncode != 0:
        return CommandResult(False, done.returncode, output, f"exit status {done.returncode}", took)
    return CommandResult(True, 0, output, "", took)


@dataclass(slots=True)
class _Running:
    proc: subprocess.Popen[bytes]
    event: str
    deadline: float


class Hooks:
    """``[hooks] after_action``: started in the background, reaped on later ticks."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock if callable(clock) else time.monotonic
        self._running: list[_Running] = []

    def start(
        self, argv: Sequence[str], timeout_s: float, event: str, env: Mapping[str, str]
    ) -> str | None:
        """Start the hook for one event; the reason it was not started, or None."""
        if len(self._running) >= HOOKS_MAX:
            return f"{len(self._running)} hooks still running: this one is skipped"
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(BASE_ENV, **env),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {argv[0]}: {exc.strerror or exc}"
        self._running.append(_Running(proc, event, self._clock() + timeout_s))
        return None

    def reap(self) -> list[tuple[str, str, str]]:
        """Finished or overdue hooks: (event, why, output), why "" when it worked.
        Never blocks."""
        failed: list[tuple[str, str, str]] = []
        keep: list[_Running] = []
        now = self._clock()
        for run_ in self._running:
            code = run_.proc.poll()
            if code is None and now < run_.deadline:
                keep.append(run_)
                continue
            if code is None:
                run_.proc.kill()
                run_.proc.wait()
                why = "still running at its time limit: killed"
            else:
                why = "" if code == 0 else f"exit status {code}"
            output = b""
            if run_.proc.stdout is not None:
                try:
                    os.set_blocking(run_.proc.stdout.fileno(), False)
                    output = run_.proc.stdout.read(OUTPUT_MAX_BYTES + 1) or b""
                except OSError:
                    output = b""
                run_.proc.stdout.close()
            failed.append((run_.event, why, _cut(output)))
        self._running = keep
        return failed

    def close(self, grace_s: float = 2.0) -> None:
        """At exit: give running hooks a moment, then kill them."""
        deadline = time.monotonic() + grace_s
        for run_ in self._running:
            try:
                run_.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run_.proc.kill()
                run_.proc.wait()
            if run_.proc.stdout is not None:
                run_.proc.stdout.close()
        self._running = []
