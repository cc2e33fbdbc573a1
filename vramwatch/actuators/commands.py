"""Commands vramwatch runs: a tenant's ``release`` argv and the ``after_action`` hook.

One runner for both (SPEC "Hooks"): an argv run without a shell, stdin closed,
in a session (and process group) of its own, with a time limit. At the limit
the whole group is killed, not only its first process; a command has ended
when its first process has exited and its output is closed (nothing of the
group writes to it any more), and whatever it left in its group is killed
then too. A thread per command drains its output as it comes, keeps the first
``OUTPUT_MAX_BYTES`` and discards the rest, so a command that writes 200 MiB
costs vramwatch 2 KiB, and one that writes more than a pipe holds does not
block until its time limit. Nothing here raises: a command that cannot start,
fails or overruns is a result; its output is cleaned where it is read, so it
can go into the journal and into a hook's environment.

``release`` runs in the loop (the action waits for it, as it waits for a
systemd job; ``waiting`` is called meanwhile, for the watchdog). Hooks never
delay guarding: each starts in the background and is reaped on later ticks;
at most ``HOOKS_MAX`` run at once, more are dropped and counted.
"""

from __future__ import annotations

import codecs
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Enough output for an error message, not enough to flood the journal.
OUTPUT_MAX_BYTES = 2048
# Hooks in flight at once; beyond it a hook is skipped (and the skip is logged).
HOOKS_MAX = 4
# A minimal environment: PATH for the command's own children, nothing inherited.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# How often a waiting loop looks at a running command (and calls ``waiting``).
POLL_S = 0.25
# One read of a command's output: a pipe's default capacity.
CHUNK_BYTES = 65536
# After SIGKILL to its group, how long ``run`` waits for the first process to be reaped
# (a process stuck in the kernel, state D, outlives SIGKILL); then it is left to the
# standard library's reaping of abandoned children.
KILL_WAIT_S = 5.0
CUT = "… (cut)"
KILLED = "still running at its time limit: killed"

# Not text a journal reader sees as text (journalctl shows "[blob data]" for them), and
# NUL, which no environment variable can hold: C0 and C1 controls but tab and newline,
# and lone surrogates (no encoding takes them).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` fit for the journal and an environment: each control character but tab
    and newline, and each lone surrogate, becomes U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    returncode: int | None  # None: did not start, or killed at the time limit
    output: str  # stdout and stderr, cut to OUTPUT_MAX_BYTES, printable
    problem: str  # "" when ok; else one sentence: why it failed
    duration_s: float


def _text(kept: bytes, cut: bool) -> str:
    """Kept output as text: undecodable bytes as U+FFFD, a character split by the cut
    dropped, then :func:`printable`."""
    if cut:
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(kept, final=False)
    else:
        text = kept.decode("utf-8", errors="replace")
    text = printable(text).strip()
    return text + (" " + CUT if text else CUT) if cut else text


class _Drain(threading.Thread):
    """Reads a command's output as it comes: keeps the first OUTPUT_MAX_BYTES, counts
    the rest. Ends at end of file, or when told to (a process that left the group
    may hold the pipe open forever)."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="vramwatch-command-output", daemon=True)
        self.fd = fd
        self.kept = bytearray()
        self.dropped = 0
        self.closed = threading.Event()  # end of file: nothing writes to it any more
        self._quit = False

    def run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            while not self._quit:
                if not poller.poll(POLL_S * 1000):
                    continue
                chunk = os.read(self.fd, CHUNK_BYTES)
                if not chunk:
                    break
                room = OUTPUT_MAX_BYTES - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - max(0, room))
        except OSError:
            pass  # the output is unreadable: what was kept is what there is
        finally:
            self.closed.set()

    def finish(self) -> None:
        """Stop reading (within POLL_S) and wait for it."""
        self._quit = True
        self.join(timeout=POLL_S * 4)


class Command:
    """One started command: its own session, its output drained in the background.

    Its first process is not reaped until the command is over: while it exists (a
    zombie at least), its process group ID cannot name any other group, so the kill
    at the time limit reaches this command's processes and no one else's.
    """

    def __init__(self, argv: Sequence[str], proc: subprocess.Popen[bytes], timeout_s: float):
        self.argv = tuple(argv)
        self.proc = proc
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        assert proc.stdout is not None
        self._drain = _Drain(proc.stdout.fileno())
        self._drain.start()
        self.killed = False  # at its time limit
        self._exited = False
        self._lost = False  # reaped by someone else: its group ID may name another group
        self._nap = 0.001

    @classmethod
    def start(
        cls, argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
    ) -> Command | str:
        """Start ``argv``; the Command, or why it could not start."""
        name = argv[0] if argv else "(nothing)"
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_environment(env or {}),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {name}: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - an argv Popen refuses is a result too
            return f"cannot run {name}: {exc}"
        try:
            return cls(argv, proc, timeout_s)
        except Exception as exc:  # noqa: BLE001 - no thread for its output: stop it
            _kill_group(proc.pid)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            return f"cannot run {name}: {exc}"

    def exited(self) -> bool:
        """Whether the first process has exited (without reaping it)."""
        if not self._exited:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped elsewhere: gone, and its group ID free
                info = None
                self._exited = self._lost = True
            self._exited = self._exited or info is not None
        return self._exited

    def done(self) -> bool:
        """It exited and nothing of it writes to its output any more."""
        return self.exited() and self._drain.closed.is_set()

    def overdue(self) -> bool:
        return time.monotonic() >= self.deadline

    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the command to end, without spinning."""
        if not self._drain.closed.is_set():
            self._drain.closed.wait(seconds)
        if self._drain.closed.is_set() and not self.exited():
            # The output is closed: its first process ends any moment, or closed its
            # output early and runs on; the naps grow, so neither waits long or spins.
            time.sleep(min(seconds, self._nap))
            self._nap = min(POLL_S, self._nap * 2)

    def kill(self) -> None:
        """The time limit: SIGKILL to the whole group."""
        self.killed = True
        if not self._lost:
            _kill_group(self.proc.pid)

    def reap(self) -> bool:
        """End it, when its first process has exited: kill what it left in its group,
        reap it, stop draining. False while that process is still there."""
        if not self.exited():
            return False
        if not self._lost:
            _kill_group(self.proc.pid)  # leftovers; the zombie still holds the group's ID
        self.proc.wait()
        self._drain.finish()
        if not self._drain.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()
        return True

    def abandon(self) -> None:
        """Give up on reaping it (stuck after SIGKILL): the Popen object, once dropped,
        is reaped by the standard library when it can be."""
        self._drain.finish()

    def result(self) -> CommandResult:
        took = time.monotonic() - self.started
        output = _text(bytes(self._drain.kept), self._drain.dropped > 0)
        if self.killed:
            problem = f"still running after {self.timeout_s:g}s: killed"
            return CommandResult(False, None, output, problem, took)
        code = self.proc.returncode
        if code == 0:
            return CommandResult(True, 0, output, "", took)
        if code is None:
            return CommandResult(False, None, output, "still running: abandoned", took)
        if code < 0:
            return CommandResult(False, code, output, f"killed by signal {-code}", took)
        return CommandResult(False, code, output, f"exit status {code}", took)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass  # nothing left in it


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    """BASE_ENV plus ``env``, every value printable (no NUL: Popen refuses it); a name
    no environment can hold is left out."""
    merged = dict(BASE_ENV)
    for key, value in env.items():
        if key and "=" not in key and printable(key) == key:
            merged[key] = printable(str(value))
    return merged


def run(
    argv: Sequence[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    *,
    waiting: Callable[[], object] | None = None,
) -> CommandResult:
    """Run ``argv`` to its end or its time limit; never raises.

    ``waiting`` is called every POLL_S while the command runs within its time limit
    (to feed the watchdog); not after it: a wait stuck past it must let systemd act.
    """
    cmd = Command.start(argv, timeout_s, env)
    if isinstance(cmd, str):
        return CommandResult(False, None, "", cmd, 0.0)
    while not cmd.done():
        if cmd.overdue():
            cmd.kill()
            break
        if waiting is not None:
            waiting()
        cmd.pause(min(POLL_S, max(0.0, cmd.deadline - time.monotonic())))
    give_up = time.monotonic() + KILL_WAIT_S
    while not cmd.reap():
        if time.monotonic() >= give_up:
            cmd.abandon()
            break
        time.sleep(0.05)
    return cmd.result()


@dataclass(slots=True)
class _Running:
    command: Command
    event: str
    told: bool = False  # reported already: killed, and stuck since


class Hooks:
    """``[hooks] after_action``: started in the background, reaped on later ticks."""

    def __init__(self) -> None:
        self._running: list[_Running] = []

    def start(
        self, argv: Sequence[str], timeout_s: float, event: str, env: Mapping[str, str]
    ) -> str | None:
        """Start the hook for one event; the reason it was not started, or None. Never
        raises."""
        if len(self._running) >= HOOKS_MAX:
            return f"{len(self._running)} hooks still running: this one is skipped"
        cmd = Command.start(argv, timeout_s, env)
        if isinstance(cmd, str):
            return cmd
        self._running.append(_Running(cmd, event))
        return None

    def reap(self) -> list[tuple[str, str, str]]:
        """Ended hooks: (event, why, output), why "" when it worked. Never blocks: an
        overdue hook's group is killed here and the hook reported on a later call, once
        its first process is gone; it counts as running until then."""
        ended: list[tuple[str, str, str]] = []
        keep: list[_Running] = []
        for run_ in self._running:
            cmd = run_.command
            if not cmd.killed and not cmd.done():
                if cmd.overdue():
                    cmd.kill()
                keep.append(run_)
                continue
            if not cmd.reap():
                # Killed, and not gone yet: stuck in the kernel. Said once, still counted.
                if not run_.told and time.monotonic() >= cmd.deadline + KILL_WAIT_S:
                    run_.told = True
                    ended.append((run_.event, f"{KILLED}, and has not exited since", ""))
                keep.append(run_)
                continue
            if not run_.told:
                result = cmd.result()
                why = KILLED if cmd.killed else result.problem
                ended.append((run_.event, why, result.output))
        self._running = keep
        return ended

    def close(self, grace_s: float = 2.0) -> None:
        """At exit: give running hooks a moment, then kill them."""
        deadline = time.monotonic() + grace_s
        for run_ in self._running:
            cmd = run_.command
            while not cmd.done() and time.monotonic() < deadline:
                cmd.pause(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if not cmd.done():
                cmd.kill()
            give_up = time.monotonic() + 1.0
            while not cmd.reap() and time.monotonic() < give_up:
                time.sleep(0.05)
            if not cmd.exited():
                cmd.abandon()
        self._running = []
