"""NVML on one worker thread, so a hung driver never stops the loop.

Xid errors and GSP timeouts can block an NVML call for minutes. The loop hands
each GPU sample to one long-lived worker thread and waits for it at most the
tick's deadline (``[gpu] nvml_timeout``); NVML releases the GIL, so the loop
goes on with host RAM meanwhile. While the worker is stuck, later ticks do not
queue more work behind it (no thread pile-up): they skip GPU sampling at once
and report every GPU known so far as unknown. When the stuck call returns, its
stale result is dropped and the next tick samples afresh.

While a sample waits for the worker within its deadline it sends systemd's
keep-alive (``KeepAlive``) every watchdog interval: ``nvml_timeout`` may be
longer than half of ``WatchdogSec=``. A wait never outlasts its deadline, and
no keep-alive is sent past it, so a loop stuck anywhere else is still killed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from vramwatch.model import GpuSample
from vramwatch.units import format_duration

# The error code of a GPU sample skipped because NVML did not answer in time.
HUNG = "NVML_HUNG"


class GpuSource(Protocol):
    """What the worker runs: ``NvmlSource`` or a test double."""

    def sample(self, now_ns: int) -> tuple[tuple[GpuSample, ...], str | None]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GpuReading:
    gpus: tuple[GpuSample, ...]
    nvml_error: str | None
    hung_ns: int | None = None  # how long the running NVML call has been stuck


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """While a sample waits for NVML within its deadline: ``send()`` every ``every_ns``
    (the watchdog interval: ``systemd.watchdog_interval_ns()``)."""

    every_ns: int
    send: Callable[[], object]


class _Job:
    __slots__ = ("now_ns", "done", "result", "error")

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns  # the tick that asked: on the caller's clock
        self.done = threading.Event()
        self.result: tuple[tuple[GpuSample, ...], str | None] | None = None
        self.error: BaseException | None = None


class DeadlineGpuSource:
    """Runs ``inner.sample`` on one worker thread; each call waits at most ``timeout_ns``."""

    def __init__(self, inner: GpuSource, keepalive: KeepAlive | None = None) -> None:
        self.inner = inner
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: _Job | None = None  # handed over, not yet taken by the worker
        self._running: _Job | None = None  # taken by the worker, not finished
        self._closing = False
        self._worker_closes = False  # close() came while a call was stuck in the inner source
        self._thread: threading.Thread | None = None
        self._known: tuple[GpuSample, ...] = ()  # the GPUs of the last answered sample

    def sample(self, now_ns: int, timeout_ns: int) -> GpuReading:
        """The GPUs, or (after ``timeout_ns``, or at once while still stuck) every known GPU
        as unknown with ``hung_ns`` set. Re-raises what the inner source raised."""
        with self._lock:
            stuck = self._running or self._pending
            if stuck is None:
                job = _Job(now_ns)
                self._pending = job
                self._ensure_thread()
                self._wake.notify()
        if stuck is not None:
            return self._hung(stuck, now_ns, timeout_ns)
        if not self._wait(job, timeout_ns):
            return self._hung(job, now_ns, timeout_ns)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        gpus, error = job.result
        return GpuReading(gpus, error)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running is not None or self._pending is not None

    def close(self) -> None:
        """Stop the worker; close the inner source unless a call is stuck in it."""
        with self._lock:
            self._closing = True
            stuck = self._running is not None
            self._worker_closes = stuck
            self._pending = None
            self._wake.notify()
            thread = self._thread
        if thread is not None and not stuck:
            thread.join(timeout=1)
        if not stuck:
            self.inner.close()
        # A stuck call keeps its (daemon) thread until it returns; nvmlShutdown
        # would block behind it, and the process is exiting anyway.

    def _wait(self, job: _Job, timeout_ns: int) -> bool:
        """Wait up to ``timeout_ns`` for the job; keep the watchdog fed meanwhile, never
        past the deadline. True when it finished."""
        keepalive = self.keepalive
        if keepalive is None or keepalive.every_ns <= 0:
            return job.done.wait(timeout_ns / 1e9)
        deadline = time.monotonic_ns() + timeout_ns
        while True:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                return job.done.is_set()
            if job.done.wait(min(left, keepalive.every_ns) / 1e9):
                return True
            if time.monotonic_ns() < deadline:
                try:
                    keepalive.send()
                except Exception:  # noqa: BLE001 - a lost keep-alive must not lose the GPUs
                    pass

    def _hung(self, job: _Job, now_ns: int, timeout_ns: int) -> GpuReading:
        hung_ns = max(now_ns - job.now_ns, timeout_ns)
        error = (
            f"{HUNG}: NVML has not answered for {format_duration(hung_ns)} "
            f"(nvml_timeout {format_duration(timeout_ns)}); GPU sampling skipped"
        )
        gpus = tuple(
            replace(
                g,
                total_bytes=None,
                used_bytes=None,
                free_bytes=None,
                processes=(),
                error=error,
                lost=False,
            )
            for g in self._known
        )
        return GpuReading(gpus, None, hung_ns)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="vramwatch-nvml", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                if self._pending is None:
                    return
                job = self._running = self._pending
                self._pending = None
            try:
                job.result = self.inner.sample(job.now_ns)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                job.error = exc
            with self._lock:
                self._running = None
                if job.result is not None:
                    self._known = job.result[0]
                closing, worker_closes = self._closing, self._worker_closes
            job.done.set()
            if closing:
                if worker_closes:
                    self._close_inner()  # close() skipped it while this call was stuck
                return

    def _close_inner(self) -> None:
        try:
            self.inner.close()
        except Exception:  # noqa: BLE001 - shutting down: nothing left to guard
            pass
