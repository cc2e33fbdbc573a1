"""The Engine API (Docker, or Podman's compatible socket): container id -> name
and compose labels, and the restart and stop calls the container actuator makes.

The only module that imports the ``docker`` package (the Docker SDK for
Python), lazily: nothing here runs, and no socket is opened, unless a tenant
is a container (or ``vramwatch status`` names unmanaged containers). Every
failure becomes an :class:`EngineError` with one of the outcomes below, so a
caller never sees the SDK's or ``requests``' exceptions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from vramwatch.model import ContainerInfo, TenantId, TenantKind
from vramwatch.sources.cgroups import container_cgroup, user_manager_uid

# Outcomes of an Engine API call, as the journal and metrics name them.
OK = "ok"
NO_SUCH_CONTAINER = "no_such_container"
TIMEOUT = "timeout"
API_ERROR = "api_error"
UNREACHABLE = "unreachable"
OUTCOMES = (OK, NO_SUCH_CONTAINER, TIMEOUT, API_ERROR, UNREACHABLE)

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"

# A listing or an inspect on a local socket answers in milliseconds; a daemon
# that takes longer is hung, and a tick must not wait on it.
READ_TIMEOUT_S = 5.0

T = TypeVar("T")


class EngineError(Exception):
    """An Engine API call that did not succeed: ``outcome`` is one of OUTCOMES."""

    def __init__(self, outcome: str, detail: str) -> None:
        self.outcome = outcome
        self.detail = detail
        super().__init__(detail)


def container_info(raw: dict[str, Any]) -> ContainerInfo:
    """One entry of ``GET /containers/json`` (or an inspect) -> ContainerInfo."""
    names = raw.get("Names") or [raw.get("Name") or ""]
    labels = raw.get("Labels") or (raw.get("Config") or {}).get("Labels") or {}
    return ContainerInfo(
        id=str(raw.get("Id", "")),
        name=str(names[0]).lstrip("/"),
        project=labels.get(COMPOSE_PROJECT),
        service=labels.get(COMPOSE_SERVICE),
    )


class Engine:
    """One Engine API endpoint (``unix:///run/docker.sock``), connected on first use."""

    def __init__(self, socket: str, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.socket = socket
        self.timeout_s = timeout_s
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError:
                from vramwatch.extras import install_hint

                how = install_hint("containers", "python3-docker")
                raise EngineError(
                    UNREACHABLE, f"the docker package is not installed ({how})"
                ) from None
            # A fixed API version: "auto" would ask the daemon at construction, outside
            # the error translation below. 1.41 is Docker 20.10's and Podman 4's.
            self._client = docker.APIClient(
                base_url=self.socket, version="1.41", timeout=self.timeout_s
            )
        return self._client

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run one API call; every failure becomes an EngineError with its outcome."""
        try:
            return fn(self._api())
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK raises requests', urllib3's, its own
            raise _translate(self.socket, what, exc) from None

    def running(self) -> list[ContainerInfo]:
        """Every running container."""
        raw = self.call("list containers", lambda api: api.containers())
        return [container_info(c) for c in raw]

    def pid(self, ident: str) -> int | None:
        """The host PID of a container's main process; None when it is not running."""
        raw = self.call(f"inspect {ident}", lambda api: api.inspect_container(ident))
        pid = (raw.get("State") or {}).get("Pid") or 0
        return int(pid) if pid > 0 else None

    def inspect(self, ident: str) -> ContainerInfo:
        """A container by name or id (NO_SUCH_CONTAINER when there is none)."""
        raw = self.call(f"inspect {ident}", lambda api: api.inspect_container(ident))
        return container_info(raw)

    def service(self, project: str, service: str, *, every: bool = False) -> list[ContainerInfo]:
        """The running containers of one compose service (``every``: stopped ones too)."""
        labels = [f"{COMPOSE_PROJECT}={project}", f"{COMPOSE_SERVICE}={service}"]
        raw = self.call(
            f"list {project}/{service}",
            lambda api: api.containers(all=every, filters={"label": labels}),
        )
        return [container_info(c) for c in raw]

    def restart(self, ident: str, t_s: int) -> None:
        """``POST /containers/{id}/restart?t=``: stop (SIGTERM, SIGKILL after t) and start."""
        self.call(f"restart {ident}", lambda api: api.restart(ident, timeout=t_s))

    def stop(self, ident: str, t_s: int) -> None:
        """``POST /containers/{id}/stop?t=``."""
        self.call(f"stop {ident}", lambda api: api.stop(ident, timeout=t_s))

    def owner_uid(self) -> int | None:
        """Who owns the socket file: a rootless engine's is its user's (root's is 0);
        None when it cannot be read."""
        try:
            return os.stat(self.socket.removeprefix("unix://")).st_uid
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead socket is not news
                pass
            self._client = None


def _translate(socket: str, what: str, exc: Exception) -> EngineError:
    """The SDK's (and requests') exceptions -> an EngineError naming the outcome."""
    name = type(exc).__name__
    text = _reason(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 404 or name == "NotFound":
        return EngineError(NO_SUCH_CONTAINER, f"{what}: no such container")
    if "Timeout" in name or "timed out" in text:
        return EngineError(TIMEOUT, f"{what}: the Engine API at {socket} did not answer in time")
    if status is not None:
        return EngineError(API_ERROR, f"{what}: the Engine API answered {status}: {text}")
    if name in ("ConnectionError", "FileNotFoundError", "ConnectionRefusedError") or isinstance(
        exc, OSError
    ):
        return EngineError(UNREACHABLE, f"{what}: cannot reach the Engine API at {socket}: {text}")
    if name == "DockerException":
        return EngineError(UNREACHABLE, f"{what}: cannot reach the Engine API at {socket}: {text}")
    return EngineError(API_ERROR, f"{what}: {name}: {text}")


# The running containers are listed again at most this often, and at once when
# a GPU process shows a container id the last listing did not have (compose
# re-creates containers with new ids on every `up`).
LIST_TTL_NS = 10 * 10**9
# An id that is still unknown after a fresh listing (a container of another
# runtime, or one that just exited) does not trigger another one before this;
# nor is a failing Engine API asked again sooner after its failure was seen (a
# hung dockerd would otherwise cost every tick READ_TIMEOUT_S).
UNKNOWN_RETRY_NS = 5 * 10**9


class Catalog:
    """What the Engine API says of the running containers, kept between ticks.

    ``refresh`` lists the running containers when the listing is older than
    LIST_TTL_NS or an id is seen that it lacks. ``cgroup`` finds a container's
    own cgroup from its main PID (inspect once per id: the cgroup outlives a
    restart, the PID does not). ``confirm`` says whether a process is a
    container's. When the API fails, ``error`` says why, the last listing
    stands (an id it lacks is then unknown), and the API is not asked again
    for UNKNOWN_RETRY_NS after the failure was seen.

    ``now_ns`` is the tick's time; ``clock`` (monotonic ns) measures how long
    the calls made since took, so that a failure is stamped when it was seen,
    not when the tick started.
    """

    def __init__(
        self,
        engine: Engine,
        cgroup_of_pid: Callable[[int], str | None],
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.cgroup_of_pid = cgroup_of_pid  # a PID's cgroup path, None when it is gone
        self.clock = clock or time.monotonic_ns
        self.by_id: dict[str, ContainerInfo] = {}
        self.error: str | None = None
        self._outcome = OK  # the last failure's, while ``error`` stands
        self._listed_ns: int | None = None
        self._failed_ns: int | None = None
        self._unknown_since: dict[str, int] = {}
        self._cgroups: dict[str, str] = {}
        self._checked: set[str] = set()  # ids whose cached cgroup was seen this tick
        self._tick = (0, self.clock())  # (the tick's now_ns, the clock then)
        self._socket_uid: int | None = None
        self._socket_uid_read = False

    def _now(self) -> int:
        """The tick's time, moved on by what the calls since it began took."""
        now_ns, then = self._tick
        return now_ns + max(0, self.clock() - then)

    def _backing_off(self) -> bool:
        return self._failed_ns is not None and self._now() - self._failed_ns < UNKNOWN_RETRY_NS

    def _failed(self, exc: EngineError) -> None:
        self.error, self._outcome = exc.detail, exc.outcome
        self._failed_ns = self._now()

    def _cannot_say(self) -> EngineError:
        return EngineError(self._outcome, self.error or "the Engine API failed")

    def refresh(self, now_ns: int, seen_ids: set[str]) -> None:
        self._tick = (now_ns, self.clock())
        self._checked = set()
        new = {i for i in seen_ids if i not in self.by_id}
        due = self._listed_ns is None or now_ns - self._listed_ns >= LIST_TTL_NS
        retry = any(
            now_ns - self._unknown_since.get(i, now_ns - UNKNOWN_RETRY_NS) >= UNKNOWN_RETRY_NS
            for i in new
        )
        if self._backing_off():
            return  # still failing: the last listing and the error stand
        if not due and not retry and self.error is None:
            return
        try:
            running = self.engine.running()
        except EngineError as exc:
            self._failed(exc)
            for i in new:
                self._unknown_since.setdefault(i, now_ns)
            return
        self.error = None
        self._failed_ns = None
        self._listed_ns = now_ns
        self._socket_uid_read = False  # the socket may have been made again
        self.by_id = {c.id: c for c in running}
        self._unknown_since = {i: now_ns for i in new if i not in self.by_id}
        for gone in set(self._cgroups) - set(self.by_id):
            del self._cgroups[gone]

    def members(self, key: str, keys: Collection[str]) -> list[ContainerInfo]:
        """The running containers of tenant ``key`` (``container:NAME``,
        ``compose:P/S``) among the configured container tenants ``keys``: a
        container that another tenant names is that tenant's, not its service's."""
        return sorted(
            (c for c in self.by_id.values() if c.tenant(keys) == key), key=lambda c: c.name
        )

    def _socket_owner(self) -> int | None:
        if not self._socket_uid_read:
            self._socket_uid = self.engine.owner_uid()
            self._socket_uid_read = True
        return self._socket_uid

    def plausible(self, cgroup: str) -> bool:
        """Whether a cgroup may hold this engine's containers at all: one under
        ``user@UID.service`` only when the socket is that user's (a rootless engine)."""
        uid = user_manager_uid(cgroup)
        return uid is None or uid == self._socket_owner()

    def cgroup(self, container: ContainerInfo, exists: Callable[[str], bool]) -> str | None:
        """The container's own cgroup path; None when it has none now (it exited).

        Raises EngineError when the Engine API cannot say now (failing, or
        still within its back-off)."""
        cached = self._cgroups.get(container.id)
        # Once a tick: every GPU process of a container asks for its cgroup.
        if cached is not None and (container.id in self._checked or exists(cached)):
            self._checked.add(container.id)
            return cached
        if self._backing_off():
            raise self._cannot_say()
        try:
            pid = self.engine.pid(container.id)
            path = self.cgroup_of_pid(pid) if pid is not None else None
            # The PID was the container's while its cgroup was read only if the
            # engine still names it after: a PID freed and reused meanwhile may be
            # anyone's, in a scope named after the container.
            if path is not None and self.engine.pid(container.id) != pid:
                path = None
        except EngineError as exc:
            if exc.outcome == NO_SUCH_CONTAINER:
                return None
            self._failed(exc)
            raise
        found = container_cgroup(path, container.id) if path is not None else None
        if found is None or not self.plausible(found):
            return None
        self._cgroups[container.id] = found
        self._checked.add(container.id)
        return found

    def confirm(
        self, ident: str, cgroup: str, exists: Callable[[str], bool]
    ) -> ContainerInfo | None:
        """The running container ``ident`` when ``cgroup`` is its own cgroup or below
        it, as the Engine API locates it; None when the process is not that
        container's (whatever its cgroup is called).

        Raises EngineError when the API cannot say now."""
        if not self.plausible(cgroup):
            return None
        info = self.by_id.get(ident)
        if info is None:
            if self.error is not None:
                raise self._cannot_say()
            return None
        own = self.cgroup(info, exists)
        if own is None or not (cgroup == own or cgroup.startswith(own.rstrip("/") + "/")):
            return None
        return info

    def close(self) -> None:
        self.engine.close()


def check_warnings(keys: list[str], engine: Engine) -> list[str]:
    """``vramwatch check``: is the Engine API reachable, and does each container
    tenant exist right now? Warnings only: a container may be started later."""
    if not keys:
        return []
    try:
        engine.running()
    except EngineError as exc:
        return [f"container tenants are configured but {exc.detail}"]
    warnings = []
    for key in keys:
        ident = TenantId.from_key(key)
        try:
            if ident.kind is TenantKind.CONTAINER:
                engine.inspect(ident.name)
                continue
            project, _, service = ident.name.partition("/")
            if engine.service(project, service, every=True):
                continue
            warnings.append(
                f"{key}: no container of compose service {ident.name} exists right now "
                "(watched once it starts)"
            )
        except EngineError as exc:
            if exc.outcome != NO_SUCH_CONTAINER:
                warnings.append(f"{key}: {exc.detail}")
                continue
            warnings.append(
                f"{key}: no container named {ident.name} exists right now (watched once it starts)"
            )
    return warnings


def _reason(exc: BaseException) -> str:
    """The OS's words when an OSError lies under requests' and urllib3's wrappers
    (``('Connection aborted.', FileNotFoundError(2, ...))`` -> "No such file or
    directory"), else the exception's own text."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        if isinstance(item, BaseException):
            stack.extend(item.args)
            stack.extend(x for x in (item.__cause__, item.__context__) if x is not None)
            stack.extend(x for x in (getattr(item, "reason", None),) if x is not None)
    return str(exc).strip() or type(exc).__name__
