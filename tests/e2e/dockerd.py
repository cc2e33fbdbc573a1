"""A private Docker Engine for the container tests (PLATFORM-NOTES "Containers").

:class:`Dockerd` runs Debian's ``dockerd`` as root with its own data root,
exec root, socket and pidfile under one temporary directory, no bridge and no
iptables rules, so it touches nothing of the host's own Docker (if any) and
leaves nothing behind: :meth:`Dockerd.close` removes every container and
image it made, stops the daemon (and the containerd it started), unmounts
whatever is still mounted below its directory and deletes it.

Images are built without a registry: busybox-static in a tar, imported.
The socket is made world-writable so that vramwatch under test, running as
the sandbox's unprivileged user, can reach it: in production that access is
root-equivalent (docs/install.md).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
IMAGE = "vramwatch-test/busybox"  # :latest (Podman's import ignores the tag)
# Applets the test containers run.
APPLETS = ("sh", "sleep", "yes", "head", "cat", "true")
START_TIMEOUT_S = 30


def missing(engine: str = "/usr/sbin/dockerd") -> list[str]:
    """What this machine lacks to run a private dockerd (or ``podman`` service)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    engine_package = "podman" if engine.endswith("podman") else "docker.io"
    for path, package in ((engine, engine_package), (BUSYBOX, "busybox-static")):
        if not os.access(path, os.X_OK):
            problems.append(f"no {path} (apt install {package}; scripts/bootstrap does)")
    try:
        import docker  # noqa: F401
    except ImportError:
        problems.append("no docker package in this venv (scripts/bootstrap installs '.[test]')")
    return problems


class Dockerd:
    def __init__(self) -> None:
        # Under /tmp and traversable: the sandbox's namespace sees /tmp, and its user
        # must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="vramwatch-dockerd-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.socket_path = self.dir / "docker.sock"
        self.socket = f"unix://{self.socket_path}"
        # Containers' cgroups go under a parent of this daemon's own (cgroupfs driver:
        # /<parent>/<id>), removed with it, instead of the host's shared /docker.
        self.cgroup_parent = f"/{self.dir.name}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"
        self._api: Any = None
        self.startup_s = 0.0

    def command(self) -> list[str]:
        for sub in ("data", "exec"):
            (self.dir / sub).mkdir(exist_ok=True)
        # Its own config file: the host's /etc/docker/daemon.json is not read, and
        # the identity key dockerd 20.10 creates goes here, not to /etc/docker.
        config = self.dir / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}))
        return [
            DOCKERD,
            "--config-file", str(config),
            "--data-root", str(self.dir / "data"),
            "--exec-root", str(self.dir / "exec"),
            "-H", self.socket,
            "--pidfile", str(self.dir / "dockerd.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--cgroup-parent", self.cgroup_parent,
        ]  # fmt: skip

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> Dockerd:
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.tail()}")
            if self.socket_path.exists():
                try:
                    self.api().ping()
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dockerd did not answer within {START_TIMEOUT_S}s:\n{self.tail()}"
                )
            time.sleep(0.1)
        self.socket_path.chmod(0o666)
        self.startup_s = time.monotonic() - started
        return self

    def tail(self) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-20:])
        except OSError:
            return ""

    def api(self) -> Any:
        if self._api is None:
            import docker

            self._api = docker.APIClient(base_url=self.socket, version="1.41", timeout=60)
        return self._api

    def _find_image(self) -> str | None:
        for image in self.api().images():
            if any(t.endswith(f"{IMAGE}:latest") for t in image.get("RepoTags") or []):
                return str(image["Id"])
        return None

    def image(self) -> str:
        """busybox-static as an image, built locally (no registry is reachable); its id."""
        found = self._find_image()
        if found is not None:
            return found
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
            for empty in ("tmp", "proc", "sys", "dev"):
                d = tarfile.TarInfo(empty)
                d.type = tarfile.DIRTYPE
                d.mode = 0o1777 if empty == "tmp" else 0o755
                tar.addfile(d)
        self.api().import_image_from_data(buf.getvalue(), repository=IMAGE, tag="latest")
        found = self._find_image()
        assert found is not None, self.api().images()
        return found

    def run(
        self,
        name: str,
        script: str,
        *,
        compose: tuple[str, str] | None = None,
        **host_config: Any,
    ) -> dict[str, Any]:
        """Start a container running ``sh -c script``; its inspect data."""
        api = self.api()
        labels = {}
        if compose is not None:
            labels = {
                "com.docker.compose.project": compose[0],
                "com.docker.compose.service": compose[1],
            }
        created = api.create_container(
            self.image(),
            ["/bin/sh", "-c", script],
            name=name,
            labels=labels,
            host_config=api.create_host_config(
                network_mode="none", **self.host_config_defaults(), **host_config
            ),
        )
        api.start(created["Id"])
        return self.inspect(created["Id"])

    def host_config_defaults(self) -> dict[str, Any]:
        return {}

    def inspect(self, ident: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api().inspect_container(ident)
        return result

    def remove_containers(self) -> None:
        api = self.api()
        for c in api.containers(all=True):
            api.remove_container(c["Id"], force=True)

    def stop(self) -> None:
        """Stop the daemon (its containers die with it); the directory stays."""
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # noqa: BLE001
                pass
            self._api = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Remove everything: containers, images, the daemon, its mounts and directory."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.remove_containers()
                for image in self.api().images():
                    self.api().remove_image(image["Id"], force=True)
            except Exception:  # noqa: BLE001 - the daemon may be half gone: clean up below
                pass
        self.stop()
        self._kill_leftovers()
        self._unmount_below()
        self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """The cgroup parent in every hierarchy (emptied: every container is gone)."""
        root = Path("/sys/fs/cgroup")
        candidates = [root / self.cgroup_parent.lstrip("/")]
        if root.is_dir():
            candidates += [h / self.cgroup_parent.lstrip("/") for h in root.iterdir() if h.is_dir()]
        for path in candidates:
            if path.is_dir():
                for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        try:
                            sub.rmdir()
                        except OSError:
                            pass
                try:
                    path.rmdir()
                except OSError:
                    pass

    def _kill_leftovers(self) -> None:
        """containerd and shims started for this daemon (their command lines name its dir)."""
        mark = str(self.dir)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if mark in cmdline:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount_below(self) -> None:
        mark = str(self.dir)
        try:
            mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return
        points = [line.split()[4] for line in mounts if line.split()[4].startswith(mark)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


PODMAN = "/usr/bin/podman"
# Where root's Podman keeps its blob-info cache whatever --root says.
PODMAN_CACHE = Path("/var/lib/containers")


class Podman(Dockerd):
    """``podman system service``: the Docker-compatible Engine API of Podman 4.3,
    with its own storage, run and tmp directories, the cgroupfs manager (no
    systemd as PID 1 here) and file events."""

    def __init__(self) -> None:
        super().__init__()
        self.socket_path = self.dir / "podman.sock"
        self.socket = f"unix://{self.socket_path}"
        self.cgroup_parent = f"/{self.dir.name}"
        self._cache_existed = PODMAN_CACHE.exists()

    def command(self) -> list[str]:
        for sub in ("root", "run", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        # Containers may not raise rlimits past the service's own: ask for less.
        (self.dir / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        )
        return [
            PODMAN,
            "--root", str(self.dir / "root"),
            "--runroot", str(self.dir / "run"),
            "--tmpdir", str(self.dir / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "system", "service", "--time", "0", self.socket,
        ]  # fmt: skip

    def environment(self) -> dict[str, str] | None:
        return {**os.environ, "CONTAINERS_CONF": str(self.dir / "containers.conf")}

    def host_config_defaults(self) -> dict[str, Any]:
        return {"cgroup_parent": self.cgroup_parent}

    def close(self) -> None:
        super().close()
        if not self._cache_existed:
            shutil.rmtree(PODMAN_CACHE, ignore_errors=True)
        root = Path("/sys/fs/cgroup")
        # conmon's cgroup, made by Podman's cgroupfs manager when absent.
        for parent in [root / "libpod_parent", *(h / "libpod_parent" for h in root.iterdir())]:
            if parent.is_dir():
                for sub in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        try:
                            sub.rmdir()
                        except OSError:
                            pass
                try:
                    parent.rmdir()
                except OSError:
                    pass
