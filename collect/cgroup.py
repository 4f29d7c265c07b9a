"""The target memcg: finding this process's own, creating a limited child, sampling it.
Standard library only: a lab guest's system python3 runs it (lab/facts.py).

cgroup v2 is used where its hierarchy has the memory controller; otherwise cgroup v1
(hybrid hosts such as the development machines), where memory.high does not exist.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from collect.rmdir import rmdir_patiently
from traces.errors import UserError

UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, just below 2**63
CHILD_PREFIX = "chargeplay-"


class CgroupError(UserError):
    """A cgroup operation failed; the message says what to do."""


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fstype, _source, options = right.split(" ", 2)
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((left.split()[4], fstype, options))
    return mounts


def memory_hierarchy() -> tuple[int, Path]:
    """(cgroup version, mount point) of the hierarchy that has the memory controller."""
    for mountpoint, fstype, _ in _mounts():
        controllers = Path(mountpoint, "cgroup.controllers")
        if fstype == "cgroup2" and controllers.exists() and "memory" in controllers.read_text().split():
            return 2, Path(mountpoint)
    for mountpoint, fstype, options in _mounts():
        if fstype == "cgroup" and "memory" in options.split(","):
            return 1, Path(mountpoint)
    raise CgroupError("no cgroup hierarchy has the memory controller; boot with memory cgroups enabled")


def own_cgroup(version: int, pid: int | str = "self") -> str:
    """This process's cgroup path in the given hierarchy, from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (version == 1 and "memory" in controllers.split(",")):
            return path
    raise CgroupError(f"/proc/{pid}/cgroup names no memory cgroup")


def _read_limit(path: Path) -> int | None:
    text = path.read_text().strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= UNLIMITED_V1 else value


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file such as memory.stat or memory.events."""
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


@dataclass
class Memcg:
    path: Path
    version: int

    @property
    def id(self) -> int:
        """The id memcg tracepoints show: the cgroup directory's inode number."""
        return os.stat(self.path).st_ino

    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == 1 else v2)

    def limits(self) -> dict[str, int | None]:
        high = self.path / "memory.high"
        return {
            "max": _read_limit(self._file("memory.limit_in_bytes", "memory.max")),
            "high": _read_limit(high) if self.version == 2 and high.exists() else None,
        }

    def set_limits(self, max_bytes: int | None, high_bytes: int | None) -> None:
        if max_bytes is not None:
            self._file("memory.limit_in_bytes", "memory.max").write_text(str(max_bytes))
        if high_bytes is not None and self.version == 2:
            (self.path / "memory.high").write_text(str(high_bytes))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def threads(self) -> list[int]:
        """Its threads' ids; none if it is gone."""
        try:
            return [int(t) for t in self._file("tasks", "cgroup.threads").read_text().split()]
        except FileNotFoundError:
            return []

    def sample(self) -> dict[str, int | None]:
        """The counters memcg.parquet records, in bytes (see traces.schema.MEMCG_COLUMNS)."""
        limits = self.limits()
        if self.version == 1:
            stat = read_keyed(self.path / "memory.stat")
            return {
                "usage": int((self.path / "memory.usage_in_bytes").read_text()),
                "max_usage": int((self.path / "memory.max_usage_in_bytes").read_text()),
                "max": limits["max"],
                "high": None,
                "failcnt": int((self.path / "memory.failcnt").read_text()),
                "kmem_usage": int((self.path / "memory.kmem.usage_in_bytes").read_text()),
                "events_high": None,
                "events_oom_kill": read_keyed(self.path / "memory.oom_control").get("oom_kill"),
                "file": stat.get("cache"),
                "anon": stat.get("rss"),
                "shmem": stat.get("shmem"),
                "slab_reclaimable": None,
                "slab_unreclaimable": None,
            }
        stat = read_keyed(self.path / "memory.stat")
        events = read_keyed(self.path / "memory.events")
        peak = self.path / "memory.peak"
        return {
            "usage": int((self.path / "memory.current").read_text()),
            "max_usage": int(peak.read_text()) if peak.exists() else None,
            "max": limits["max"],
            "high": limits["high"],
            "failcnt": events.get("max"),
            "kmem_usage": stat.get("kernel"),
            "events_high": events.get("high"),
            "events_oom_kill": events.get("oom_kill"),
            "file": stat.get("file"),
            "anon": stat.get("anon"),
            "shmem": stat.get("shmem"),
            "slab_reclaimable": stat.get("slab_reclaimable"),
            "slab_unreclaimable": stat.get("slab_unreclaimable"),
        }

    def describe(self, root: Path) -> dict:
        """The manifest's record of this memcg and its ancestors up to the hierarchy root
        (the replay models the whole chain: a charge must fit under every ancestor)."""
        ancestors = []
        parent = self.path.parent
        while parent != root and root in parent.parents:
            ancestors.append({"path": "/" + str(parent.relative_to(root)), "memcg_id": os.stat(parent).st_ino,
                              **Memcg(parent, self.version).limits()})
            parent = parent.parent
        return {
            "cgroup_path": "/" + str(self.path.relative_to(root)),
            "memcg_id": self.id,
            "cgroup_version": self.version,
            **self.limits(),
            "ancestors": ancestors,
        }

    def descendants(self) -> list[Memcg]:
        """Every memcg below this one (a workload may make its own), parents before children."""
        return [Memcg(Path(directory), self.version) for directory, _, _ in os.walk(self.path)][1:]

    def remove(self, timeout: float = 10.0) -> None:
        """Kill whatever still runs in this (our own) child memcg or below it, then remove
        the memcgs below it, deepest first, and it."""
        for memcg in [*reversed(self.descendants()), self]:
            try:
                rmdir_patiently(memcg.path, timeout, self._kill_tasks)
            except OSError as err:
                raise CgroupError(f"cannot remove {memcg.path}: {err.strerror}; remove it by hand") from None

    def _kill_tasks(self) -> None:
        for memcg in [self, *self.descendants()]:
            try:
                pids = memcg.pids()
            except FileNotFoundError:
                continue  # removed meanwhile
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Subtree:
    """The cgroup ids of a memcg and of every memcg seen below it. A workload may make memcgs
    of its own during the capture (its charges count against the target's limit all the same):
    the collector looks every tick, and again for an id not yet known before it takes it for
    another memcg's. A memcg made and removed between two looks is never seen: its stat events
    are dropped with those of memcgs elsewhere."""

    def __init__(self, memcg: Memcg, root: Path) -> None:
        self.memcg, self.root, self.target = memcg, root, memcg.id
        self.paths: dict[int, str] = {}  # cgroup id -> path in the hierarchy, for every memcg ever seen
        self.oom_kills: dict[str, int] = {}  # v1: each memcg's own OOM kill count, as last read
        self.look()

    def look(self) -> None:
        for memcg in [self.memcg, *self.memcg.descendants()]:
            try:
                self.paths.setdefault(memcg.id, "/" + str(memcg.path.relative_to(self.root)))
            except FileNotFoundError:
                pass  # removed meanwhile

    def ids(self) -> list[int]:
        return list(self.paths)

    def oom_kills_below(self) -> int:
        """cgroup v1 counts an OOM kill in the victim's memcg only (memcg_memory_event stops at
        the first memcg there; v2 counts it in every ancestor too): the kills in the memcgs below
        the target, each memcg's as last read. A memcg removed since keeps its count; one
        removed within a tick of a kill takes that kill with it."""
        for memcg in self.memcg.descendants():
            try:
                self.oom_kills[str(memcg.path)] = read_keyed(memcg.path / "memory.oom_control").get("oom_kill", 0)
            except FileNotFoundError:
                pass  # removed meanwhile
        return sum(self.oom_kills.values())

    def recorded_below(self) -> list[dict]:
        """The manifest's record of the memcgs seen below the target."""
        return [{"path": path, "memcg_id": memcg_id} for memcg_id, path in self.paths.items() if memcg_id != self.target]


# Where the workloads' memcgs go when not under this process's own cgroup: a cgroup delegated to
# chargeplay that holds no processes. cgroup v2 enables a controller for a cgroup's children only
# while it holds no processes (the root excepted), so a collector whose own cgroup holds others
# (a shell, a test runner) needs one; with systemd, e.g. a unit with Delegate=yes that runs
# chargeplay in DELEGATED/supervisor and sets CHARGEPLAY_CGROUP_PARENT=DELEGATED/workloads.
PARENT_VARIABLE = "CHARGEPLAY_CGROUP_PARENT"


def workload_parent() -> tuple[int, Path, Path]:
    """(cgroup version, hierarchy root, the cgroup where chargeplay creates child memcgs)."""
    version, root = memory_hierarchy()
    given = os.environ.get(PARENT_VARIABLE)
    if not given:
        return version, root, root / own_cgroup(version).lstrip("/")
    path = _in_hierarchy(root, given)
    if not (path / "cgroup.procs").exists():
        raise CgroupError(f"{PARENT_VARIABLE}={given}: no cgroup at {path}; give a cgroup delegated to chargeplay, or unset it")
    return version, root, path


def create_child(name: str) -> tuple[Memcg, Path]:
    """A new child memcg of this process's own memcg (or of CHARGEPLAY_CGROUP_PARENT), and the hierarchy root."""
    version, root, parent = workload_parent()
    if version == 2:
        _enable_memory_controller(parent)
    path = parent / name
    try:
        path.mkdir()
    except PermissionError:
        raise CgroupError(f"cannot create {path}: permission denied; run as root") from None
    return Memcg(path, version), root


def _enable_memory_controller(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if "memory" in control.read_text().split():
        return
    try:
        control.write_text("+memory")
    except OSError as err:
        raise CgroupError(
            f"cannot enable the memory controller below {parent} ({err.strerror}): cgroup v2 allows it only "
            f"in a cgroup without processes; set {PARENT_VARIABLE} to an empty cgroup delegated to chargeplay, or use --cgroup"
        ) from None


def _in_hierarchy(root: Path, text: str) -> Path:
    """A cgroup given as a path in the memory hierarchy or as a full /sys/fs/cgroup path."""
    given = Path(text)
    return given if given.is_absolute() and root in given.parents else root / text.lstrip("/")


def existing(path_text: str) -> tuple[Memcg, Path]:
    """An existing memcg given as a path in the memory hierarchy or as a full /sys/fs/cgroup path."""
    version, root = memory_hierarchy()
    path = _in_hierarchy(root, path_text)
    if not (path / "cgroup.procs").exists():
        raise CgroupError(f"no cgroup at {path}; give a path like {own_cgroup(version)}")
    return Memcg(path, version), root


def child_parents() -> list[Path]:
    """Where chargeplay creates child memcgs (for finding stale ones)."""
    return [workload_parent()[2]]
