"""Restart or stop container tenants through the Engine API (Docker or Podman).

A container tenant is one container by name; a compose tenant is every
running container of a compose service that no other tenant names, each
restarted in turn (never a container that is a tenant of its own). The API's
answers become :class:`~vramwatch.model.JobOutcome` results: ``ok``,
``no_such_container``, ``timeout``, ``api_error``, ``unreachable`` (and
``interrupted`` when vramwatch is stopping mid-call). Nothing raises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vramwatch.config import Config
from vramwatch.model import ContainerInfo, JobOutcome, TenantId, TenantKind, Verb
from vramwatch.sources.containers import (
    NO_SUCH_CONTAINER,
    OK,
    READ_TIMEOUT_S,
    TIMEOUT,
    UNREACHABLE,
    Engine,
    EngineError,
)

# How often a running restart call checks whether vramwatch is stopping (and
# feeds the watchdog, through should_stop).
POLL_S = 0.1


class ContainerActuator:
    """``act(key, verb, should_stop)`` for ``container:NAME`` and ``compose:P/S`` keys."""

    def __init__(
        self, config: Callable[[], Config], engine: Callable[[str], Engine] = Engine
    ) -> None:
        self._config = config  # the running config: socket and stop_timeout follow reloads
        self._engine = engine

    def act(self, unit: str, verb: Verb, should_stop: Callable[[], bool]) -> JobOutcome:
        started = time.monotonic()
        config = self._config()
        settings = config.containers
        ident = TenantId.from_key(unit)
        keys = {t.unit for t in config.tenants if t.id.is_container}
        engine = self._engine(settings.socket)
        try:
            members, others = _members(engine, ident, keys)
        except EngineError as exc:
            engine.close()
            # Nothing was asked of any container yet: an unreachable API restarted nothing.
            return JobOutcome(
                False,
                exc.outcome,
                exc.detail,
                time.monotonic() - started,
                reached=exc.outcome != UNREACHABLE,
            )
        if not members:
            engine.close()
            return JobOutcome(
                False,
                NO_SUCH_CONTAINER,
                f"no running container of compose service {ident.name}"
                + (f" that is not a tenant of its own ({_names(others)})" if others else ""),
                time.monotonic() - started,
            )
        done: list[ContainerInfo] = []
        for container in members:
            error, finished = _call(
                engine, verb, container.id, settings.stop_timeout_s, should_stop
            )
            if not finished:
                # The call goes on in its thread; the engine it uses stays open for it.
                return JobOutcome(
                    False,
                    "interrupted",
                    f"vramwatch is stopping while the {verb.value} of {_names([container])} runs",
                    time.monotonic() - started,
                    accepted=True,
                )
            if error is not None:
                engine.close()
                # A timed-out call may still be carried out by the engine; and a compose
                # service whose first containers were restarted has had an action.
                accepted = error.outcome == TIMEOUT or bool(done)
                return JobOutcome(
                    False,
                    error.outcome,
                    error.detail + (f" (after restarting {_names(done)})" if done else ""),
                    time.monotonic() - started,
                    accepted=accepted,
                )
            done.append(container)
        engine.close()
        elapsed = time.monotonic() - started
        return JobOutcome(True, OK, f"{verb.value} {_names(done)} done in {elapsed:.1f}s", elapsed)


def _members(
    engine: Engine, ident: TenantId, keys: set[str]
) -> tuple[list[ContainerInfo], list[ContainerInfo]]:
    """The containers to act on for a tenant, and those of its compose service left
    alone because another tenant names them (ContainerInfo.tenant: the rule the
    sampler and ``status`` count by)."""
    if ident.kind is TenantKind.CONTAINER:
        return [engine.inspect(ident.name)], []
    project, _, service = ident.name.partition("/")
    running = engine.service(project, service)
    mine = [c for c in running if c.tenant(keys) == ident.key]
    return mine, [c for c in running if c.tenant(keys) != ident.key]


def _names(containers: list[ContainerInfo]) -> str:
    return ", ".join(f"{c.name} ({c.id[:12]})" for c in containers)


def _call(
    engine: Engine, verb: Verb, ident: str, t_s: int, should_stop: Callable[[], bool]
) -> tuple[EngineError | None, bool]:
    """One restart or stop in a worker thread, so that the loop's watchdog is fed
    while it runs; (its error or None, whether it finished)."""
    result: list[EngineError | None] = []

    def run() -> None:
        try:
            if verb is Verb.STOP:
                engine.stop(ident, t_s)
            else:
                engine.restart(ident, t_s)
            result.append(None)
        except EngineError as exc:
            result.append(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in the SDK is an api_error here
            result.append(EngineError("api_error", f"{verb.value} {ident}: {exc!r}"))

    worker = threading.Thread(target=run, name=f"vramwatch-{verb.value}", daemon=True)
    worker.start()
    # The Engine call times out by itself (READ_TIMEOUT_S + t); this only polls.
    while worker.is_alive():
        worker.join(POLL_S)
        if worker.is_alive() and should_stop():
            return None, False
    return result[0] if result else EngineError("api_error", "no answer"), True


__all__ = ["ContainerActuator", "OK", "READ_TIMEOUT_S"]
