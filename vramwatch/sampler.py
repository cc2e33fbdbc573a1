"""One :class:`Snapshot` from the sources: GPUs, host memory, tenant units.

Attribution: a GPU process belongs to the unit named in ``/proc/PID/cgroup``;
a tenant's VRAM is the sum over its processes on every GPU, and is unknown
(``None``) when any GPU could not be read or the driver could not say a
process's memory: a partial sample must never make a tenant look over budget
or under it.
"""

from __future__ import annotations

import os
import resource
import select
from collections.abc import Callable
from dataclasses import dataclass, replace

from vramwatch.config import Config
from vramwatch.model import (
    ContainerInfo,
    GpuProcess,
    GpuSample,
    HostSample,
    Owner,
    Snapshot,
    UnitUsage,
)
from vramwatch.sources.cgroups import UnitCgroup
from vramwatch.sources.containers import Catalog, Engine, EngineError
from vramwatch.sources.procfs import RSS_SOURCE, ProcFs
from vramwatch.sources.worker import DeadlineGpuSource, GpuSource, KeepAlive

# The error code of a GPU sample with impossible values (a PID that does not
# exist, a process holding more than the device): never attributed.
BAD_SAMPLE = "BAD_SAMPLE"

# A process's GPU context is gone from NVML's lists before its /proc entry
# (the driver frees it while the process exits): a PID NVML still lists this
# long after it left /proc never existed as far as NVML's figures go.
MISSING_PID_NS = 10**9

# How many of the biggest RAM holders a breached host floor reports.
RAM_TOP = 5

# A GPU process's unit and name are re-read at most this often while the same
# process lives: a process rarely changes cgroup, and a moved one is seen
# within this time. A re-check before acting (``sample(recheck=True)``) reads
# every owner afresh: no action rests on an owner read before the breach.
IDENTITY_TTL_NS = 60 * 10**9

# Exited processes' pidfds taken from epoll per call; a call that fills it asks again.
EXITED_BATCH = 256


# Summing RSS over a unit's processes (no memory cgroup: RssAnon + RssShmem) is the
# costliest read of a tick. While MemAvailable is at least this many times its
# floor no RAM decision can be made, so a unit whose set of PIDs is unchanged
# keeps its last sum for up to RSS_RELAXED_NS; near the floor every tick reads.
RSS_RELAXED_HEADROOM = 2
RSS_RELAXED_NS = 10 * 10**9


@dataclass(slots=True)
class _Identity:
    """What a GPU process is, and a pidfd that tells when that process is gone.

    The pidfd (Linux >= 5.3) pins the identity to the process, not the PID:
    once it polls readable the process has exited and a later process with
    the same PID is read afresh. One epoll_wait() per tick checks them all,
    where a /proc/PID/stat read per process per tick cost about half the tick
    (and a poll() over every pidfd 0.25 ms at 512 processes: epoll returns only
    the exited ones).
    """

    pidfd: int
    owner: Owner
    comm: str
    read_at_ns: int
    # The last attributed value, handed out again while NVML's figures for the
    # process stay the same (GpuProcess is frozen): most ticks build none.
    last: GpuProcess | None = None


def manager_for(bus: str) -> str:
    """The manager whose units the config names: ``system`` or ``user@UID``."""
    return "system" if bus == "system" else f"user@{os.getuid()}"


def _open_files_share(divisor: int) -> int:
    """The soft open-files limit divided by ``divisor`` (2**21 / divisor when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 21) // divisor if soft == resource.RLIM_INFINITY else max(0, soft // divisor)


def pidfd_budget() -> int:
    """How many GPU processes' pidfds the sampler may keep: half the soft open-files limit."""
    return _open_files_share(2)


def cgroup_fd_budget() -> int:
    """How many descriptors of tenants' cgroups the sampler may hold open between ticks:
    a quarter of the soft open-files limit (pidfds take up to half)."""
    return _open_files_share(4)


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one, as systemd advises daemons that
    need more than 1024 (its default soft limit; the hard one is 524288): a host with
    thousands of GPU processes keeps a pidfd for each. Nothing else here uses select()."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # stays at the soft limit: pidfd_budget() keeps within it


class Sampler:
    def __init__(
        self,
        gpus: GpuSource,
        procfs: ProcFs,
        engine: Callable[[str], Engine] = Engine,
        name_containers: bool = False,
        pids: bool = False,
        keepalive: KeepAlive | None = None,
    ) -> None:
        """``engine`` makes the Engine API client for a socket; it is used only while
        a tenant is a container, or always with ``name_containers`` (``status``).

        ``pids``: read every tenant's PIDs (``cgroup.procs``) into ``UnitUsage.pids``,
        for ``status`` and a recording daemon (the attribute may change between
        ticks). No decision uses them: without, a unit's PIDs are read only when its
        RAM is summed over its processes (no memory cgroup), and are ``()`` otherwise.

        ``keepalive``: systemd's watchdog, fed while a sample waits for NVML.
        """
        self.gpus = gpus
        self.pids = pids
        # NVML runs on one worker thread with a per-tick deadline: a hung driver
        # costs the GPUs, never host-RAM guarding.
        self.nvml = DeadlineGpuSource(gpus, keepalive)
        self.procfs = procfs
        self._engine = engine
        self._name_containers = name_containers
        self._catalog: Catalog | None = None
        # What depends on the config alone, worked out once per Config object (a Config
        # never changes: a reload makes a new one): whether a tenant is a container
        # (parses every tenant's key), and which tenants' cgroups stay held.
        self._config: Config | None = None
        self._has_containers = False
        self._identities: dict[int, _Identity] = {}
        # At most half the descriptors may be pidfds: the rest are for /proc and
        # cgroupfs reads, the bus and the journal. Past it a GPU process is read
        # from /proc every tick instead of being remembered, never left unattributed.
        self._max_pidfds = pidfd_budget()
        # Every identity's pidfd, registered while it is kept: one epoll_wait() a tick.
        self._poller: select.epoll | None = None
        self._pid_of_fd: dict[int, int] = {}
        self._rss: dict[str, tuple[tuple[int, ...], int, int]] = {}  # unit -> pids, sum, at
        # Tenants' cgroups stay open between ticks (cgroup v2), those of the tenants of
        # the config last sampled only: a reload that drops a tenant closes its own.
        procfs.hold(cgroup_fd_budget())
        # PIDs NVML listed that were not in /proc, and since when: a process that
        # just exited, or, still listed MISSING_PID_NS later, a garbage PID.
        self._missing: dict[int, int] = {}
        self._missing_now: dict[int, int] = {}
        own = procfs.owner(os.getpid())
        self.self_unit = own.unit if own is not None else None

    def sample(self, config: Config, now_ns: int, *, recheck: bool = False) -> Snapshot:
        """One snapshot. ``recheck``: the sample right before an action, in which every
        GPU process's owner is read from /proc again rather than remembered, so a
        process that moved to another unit since it was last read is counted there."""
        if config is not self._config:
            self._config, self._has_containers = config, config.has_containers
            manager = manager_for(config.daemon.bus)
            self.procfs.keep_only({(t.unit, manager) for t in config.tenants})
        host = self.procfs.host()
        # Any PID that starts after this instant is not the one NVML lists (PID reuse).
        before_ticks = self.procfs.boot_ticks()
        reading = self.nvml.sample(now_ns, config.nvml_timeout_ns)
        raw_gpus, nvml_error = reading.gpus, reading.nvml_error
        self._forget_exited()
        self._missing_now = {}
        ttl_ns = 0 if recheck else IDENTITY_TTL_NS
        gpus = tuple(self._attribute(gpu, before_ticks, now_ns, ttl_ns) for gpu in raw_gpus)
        self._missing = self._missing_now
        listed = {p.pid for gpu in gpus for p in gpu.processes}
        for pid in self._identities.keys() - listed:
            self._forget(pid)
        catalog = self._containers(config, gpus, now_ns)
        gpus, unsure = _confirm_containers(gpus, catalog, self.procfs.cgroup_exists)
        manager = manager_for(config.daemon.bus)
        vram_known = nvml_error is None and all(g.error is None for g in gpus)
        vram, mps_units = _vram_by_unit(gpus, manager)
        keys: set[str] = set()
        if catalog is not None:
            keys = {t.unit for t in config.tenants if t.id.is_container}
            vram.update(_vram_by_container(gpus, keys, unsure))
        room = _host_room(config, host)  # (MemAvailable, its floor), or None
        relaxed = room is not None and room[0] >= RSS_RELAXED_HEADROOM * room[1]
        units: dict[str, UnitUsage] = {}
        for tenant in config.tenants:
            by_gpu, unknown = vram.get(tenant.unit, ({}, False))
            # Without a catalog no tenant is a container: skip parsing the key.
            if catalog is not None and tenant.id.is_container:
                units[tenant.unit] = self._container_tenant(
                    tenant.unit, keys, catalog, by_gpu, unknown or not vram_known
                )
                continue
            units[tenant.unit] = self._unit(
                tenant.unit, manager, by_gpu, unknown or not vram_known, now_ns, relaxed
            )
        ram_top: tuple[tuple[str, int], ...] = ()
        if room is not None and room[0] < room[1]:
            ram_top = tuple(self.procfs.top_ram_owners()[:RAM_TOP])
        return Snapshot(
            now_ns=now_ns,
            gpus=gpus,
            host=host,
            units=units,
            nvml_error=nvml_error,
            self_unit=self.self_unit,
            ram_top=ram_top,
            nvml_hung_ns=reading.hung_ns,
            mps_units=mps_units,
            engine_error=catalog.error if catalog is not None else None,
        )

    def _containers(
        self, config: Config, gpus: tuple[GpuSample, ...], now_ns: int
    ) -> Catalog | None:
        """The Engine API's view, refreshed; None (and no socket) without container tenants."""
        if not self._has_containers and not self._name_containers:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None
            return None
        socket = config.containers.socket
        if self._catalog is None or self._catalog.engine.socket != socket:
            if self._catalog is not None:
                self._catalog.close()
            self._catalog = Catalog(self._engine(socket), self._cgroup_of_pid)
        catalog = self._catalog
        # A cgroup under a user's manager is looked up only with that user's engine:
        # other users' scopes named after containers cost no listing.
        seen = {
            p.owner.container_id
            for gpu in gpus
            for p in gpu.processes
            if p.owner is not None
            and p.owner.container_id is not None
            and catalog.plausible(p.owner.cgroup)
        }
        catalog.refresh(now_ns, seen)
        return catalog

    def _cgroup_of_pid(self, pid: int) -> str | None:
        owner = self.procfs.owner(pid)
        return owner.cgroup if owner is not None else None

    def _container_tenant(
        self, key: str, keys: set[str], catalog: Catalog, by_gpu: dict[str, int], unknown: bool
    ) -> UnitUsage:
        """A container or compose tenant: its containers' VRAM, and RAM from their
        memory cgroups, summed; unknown while the Engine API cannot name them."""
        members = catalog.members(key, keys)
        if catalog.error is not None and not catalog.by_id:
            return UnitUsage(key, None, by_gpu, None, (), "")
        pids: list[int] = []
        ram: int | None = 0
        sources: list[str] = []
        for container in members:
            try:
                cgroup = catalog.cgroup(container, self.procfs.cgroup_exists)
            except EngineError:
                ram = None  # the Engine API cannot say where it is: unknown, never 0
                continue
            if cgroup is None:
                continue  # exited since the listing: it holds nothing now
            try:
                found = self.procfs.unit_pids(cgroup)
                used, source = self.procfs.unit_ram(cgroup, found)
            except OSError:
                used, source, found = None, "", ()
            pids.extend(found)
            ram = None if ram is None or used is None else ram + used
            sources.append(source)
        return UnitUsage(
            unit=key,
            vram_bytes=None if unknown else sum(by_gpu.values()),
            vram_by_gpu=by_gpu,
            ram_bytes=ram,
            pids=tuple(pids),
            ram_source=(sources[0] if len(set(sources)) == 1 else ", ".join(sorted(set(sources))))
            if members
            else "inactive",
            containers=tuple(members),
        )

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        self.nvml.close()
        for pid in list(self._identities):
            self._forget(pid)
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        self.procfs.close()

    def _forget(self, pid: int) -> None:
        identity = self._identities.pop(pid)
        assert self._poller is not None  # registered with it when kept
        self._poller.unregister(identity.pidfd)
        del self._pid_of_fd[identity.pidfd]
        os.close(identity.pidfd)

    def _forget_exited(self) -> None:
        """Drop the identities of processes that have exited (their pidfd is readable)."""
        while self._identities and self._poller is not None:
            exited = self._poller.poll(0, EXITED_BATCH)
            for fd, _events in exited:
                self._forget(self._pid_of_fd[fd])
            if len(exited) < EXITED_BATCH:
                return  # every exited one: each stays readable until forgotten

    def _attribute(
        self, gpu: GpuSample, before_ticks: int | None, now_ns: int, ttl_ns: int
    ) -> GpuSample:
        if gpu.error is not None:
            return gpu
        procs = []
        garbage: int | None = None
        identities = self._identities
        for p in gpu.processes:
            known = identities.get(p.pid)
            if known is not None and now_ns - known.read_at_ns < ttl_ns:
                # The same process as when its identity was read (its pidfd is not
                # readable): what _identify() would return, without a /proc read.
                last = known.last
                if last is None or last.used_bytes != p.used_bytes or last.kind != p.kind:
                    last = known.last = GpuProcess(
                        p.pid, p.used_bytes, p.kind, known.comm, known.owner
                    )
                procs.append(last)
                continue
            owner, comm = self._identify(p.pid, before_ticks, now_ns, ttl_ns)
            if owner is None and not (self.procfs.proc / str(p.pid)).exists():
                since = self._missing_now[p.pid] = self._missing.get(p.pid, now_ns)
                if now_ns - since >= MISSING_PID_NS and garbage is None:
                    garbage = p.pid
            made = GpuProcess(p.pid, p.used_bytes, p.kind, comm, owner)
            known = identities.get(p.pid)
            if known is not None:  # just read and kept: the value of its next ticks
                known.last = made
            procs.append(made)
        if garbage is not None:
            # Never attribute a sample with a PID that does not exist: the whole
            # list may be garbage (a binding/driver mismatch). The GPU is unknown.
            return replace(
                gpu,
                processes=(),
                error=f"{BAD_SAMPLE}: NVML keeps listing PID {garbage}, which does not exist "
                "(NVML library and driver mismatched?)",
            )
        return replace(gpu, processes=tuple(procs))

    def _identify(
        self, pid: int, before_ticks: int | None, now_ns: int, ttl_ns: int
    ) -> tuple[Owner | None, str]:
        """A GPU process's owner and name; no /proc read at all while it is known
        (read less than ``ttl_ns`` ago)."""
        known = self._identities.get(pid)
        if known is not None:
            if now_ns - known.read_at_ns < ttl_ns:
                return known.owner, known.comm  # same process: its pidfd is not readable
            self._forget(pid)
        if before_ticks is None:  # no /proc/uptime (a fixture tree): no reuse check, no cache
            return self.procfs.owner_since(pid, None), self._comm(pid)
        if len(self._identities) >= self._max_pidfds:
            return self.procfs.owner_since(pid, before_ticks), self._comm(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone already, too many open files, or a kernel before 5.3
            return self.procfs.owner_since(pid, before_ticks), self._comm(pid)
        # Read after the pidfd is open: if the start time shows the process is the
        # one NVML listed, the pidfd refers to that very process.
        owner = self.procfs.owner_since(pid, before_ticks)
        comm = self._comm(pid)
        if owner is None:
            os.close(pidfd)
        else:
            self._identities[pid] = _Identity(pidfd, owner, comm, now_ns)
            if self._poller is None:
                self._poller = select.epoll()
            self._poller.register(pidfd, select.EPOLLIN)
            self._pid_of_fd[pidfd] = pid
        return owner, comm

    def _unit(
        self,
        unit: str,
        manager: str,
        by_gpu: dict[str, int],
        unknown: bool,
        now_ns: int,
        relaxed: bool = False,
    ) -> UnitUsage:
        # PIDs are read first when wanted, or when the RAM was summed over them last
        # tick (the relaxed sum is kept only while they stay the same); otherwise only
        # when the unit turns out to have no memory cgroup.
        want = self.pids or unit in self._rss
        cgroup = self.procfs.locate_unit(unit, manager, now_ns, pids=want)
        if cgroup is None:
            pids: tuple[int, ...] = ()
            ram: int | None = 0  # not running: no cgroup, no memory
            source = "inactive"
        else:
            try:
                pids, ram, source = self._unit_ram(unit, cgroup, now_ns, relaxed, want)
            except OSError:
                # One unreadable cgroup must not blind the whole tick: this unit's
                # RAM is unknown (never acted on), every other reading stands.
                pids, ram, source = (), None, ""
        return UnitUsage(
            unit=unit,
            vram_bytes=None if unknown else sum(by_gpu.values()),
            vram_by_gpu=by_gpu,
            ram_bytes=ram,
            pids=pids,
            ram_source=source,
        )

    def _unit_ram(
        self, unit: str, cgroup: UnitCgroup, now_ns: int, relaxed: bool, want: bool
    ) -> tuple[tuple[int, ...], int | None, str]:
        """A located unit's PIDs (``()`` when not read), RAM and its source."""
        last = self._rss.get(unit)
        pids: tuple[int, ...] = ()
        if want:
            pids = self.procfs.unit_pids(cgroup)
            if (
                relaxed
                and last is not None
                and last[0] == pids
                and now_ns - last[2] < RSS_RELAXED_NS
            ):
                return pids, last[1], RSS_SOURCE  # same processes, far from the floor
        found = self.procfs.cgroup_ram(cgroup)
        if found is not None:
            self._rss.pop(unit, None)
            return pids, found[0], found[1]
        if not want:
            pids = self.procfs.unit_pids(cgroup)
        ram, source = self.procfs.rss_sum(pids)
        if source == RSS_SOURCE:
            self._rss[unit] = (pids, ram, now_ns)
        else:
            self._rss.pop(unit, None)
        return pids, ram, source

    def _comm(self, pid: int) -> str:
        try:
            return self.procfs.comm(pid)
        except OSError:
            return ""


def _host_room(config: Config, host: HostSample) -> tuple[int, int] | None:
    """MemAvailable and its floor in bytes, or None when host memory could not be read."""
    if host.mem_total_bytes is None or host.mem_available_bytes is None or not host.ok:
        return None
    return host.mem_available_bytes, config.host.floor.resolve(host.mem_total_bytes)


# /proc/PID/comm of the MPS control daemon and server (nvidia-cuda-mps-control,
# nvidia-cuda-mps-server), cut to 15 characters by the kernel.
MPS_COMM = "nvidia-cuda-mps"


def is_mps_daemon(proc: GpuProcess) -> bool:
    """The MPS server holds GPU memory on behalf of its clients: never theirs, never a victim."""
    return proc.name.startswith(MPS_COMM)


def _confirm_containers(
    gpus: tuple[GpuSample, ...], catalog: Catalog | None, exists: Callable[[str], bool]
) -> tuple[tuple[GpuSample, ...], bool]:
    """Keep a process's container id only where the Engine API confirms it (the
    process is in that container's own cgroup or below it), naming the container;
    clear it everywhere else, so that the process counts as its unit's (SPEC
    "Tenants: units and containers"). Without a catalog nothing can be confirmed.

    Also returns whether some process could not be told apart now (the API is
    failing): it may be any container tenant's."""
    unsure = False
    named = []
    for gpu in gpus:
        procs: list[GpuProcess] | None = None
        for i, p in enumerate(gpu.processes):
            owner = p.owner
            if owner is None or owner.container_id is None:
                continue
            info: ContainerInfo | None = None
            if catalog is not None:
                try:
                    info = catalog.confirm(owner.container_id, owner.cgroup, exists)
                except EngineError:
                    unsure = True
            if procs is None:
                procs = list(gpu.processes)
            confirmed = replace(owner, container=info, container_id=info.id if info else None)
            procs[i] = replace(p, owner=confirmed)
        named.append(gpu if procs is None else replace(gpu, processes=tuple(procs)))
    return tuple(named), unsure


def _vram_by_container(
    gpus: tuple[GpuSample, ...], keys: set[str], unsure: bool
) -> dict[str, tuple[dict[str, int], bool]]:
    """Each container tenant's VRAM per GPU UUID, and whether any of it is unknown.

    ``unsure``: a process the Engine API could not confirm or rule out (it is
    failing) may be any container tenant's: then every container tenant's VRAM
    is only a lower bound (unknown is narrow: unit tenants are not affected).
    """
    found: dict[str, tuple[dict[str, int], bool]] = {key: ({}, False) for key in keys}
    for gpu in gpus:
        for proc in gpu.processes:
            owner = proc.owner
            if owner is None or owner.container is None:
                continue
            key = owner.container.tenant(keys)
            if key is None:
                continue
            by_gpu, unknown = found[key]
            if proc.used_bytes is None:
                found[key] = (by_gpu, True)
                continue
            by_gpu[gpu.uuid] = by_gpu.get(gpu.uuid, 0) + proc.used_bytes
    if unsure:
        found = {key: (by_gpu, True) for key, (by_gpu, _) in found.items()}
    return found


def _vram_by_unit(
    gpus: tuple[GpuSample, ...], manager: str
) -> tuple[dict[str, tuple[dict[str, int], bool]], frozenset[str]]:
    """Each unit of ``manager``'s VRAM per GPU UUID, and whether any of it is unknown;
    and the units of ``manager`` that run an MPS server.

    One pass over every GPU process, so a tick costs O(processes + tenants),
    not O(processes x tenants).
    """
    found: dict[str, tuple[dict[str, int], bool]] = {}
    mps: set[str] = set()
    for gpu in gpus:
        uuid = gpu.uuid
        for proc in gpu.processes:
            owner = proc.owner
            unit = owner.unit_for(manager) if owner is not None else None
            if unit is None:
                continue
            if is_mps_daemon(proc):
                # Memory held for MPS clients (listed on their own): no unit's. Its own
                # unit, not a user manager's processes seen from the system manager.
                if owner is not None and owner.manager == manager:
                    mps.add(unit)
                continue
            entry = found.get(unit)
            if entry is None:
                entry = found[unit] = ({}, False)
            used = proc.used_bytes
            if used is None:
                found[unit] = (entry[0], True)  # NVML_VALUE_NOT_AVAILABLE: never read as zero
                continue
            by_gpu = entry[0]
            by_gpu[uuid] = by_gpu.get(uuid, 0) + used
    return found, frozenset(mps)
