"""manifest.json: what a trace holds and how it was captured.

Written when a capture starts (status "recording"), rewritten as each segment closes,
and finalised as "complete". A trace whose collector died keeps "recording" on disk;
readers report it as "interrupted" (see `effective_status`).
"""
from __future__ import annotations

import gzip
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.version import __version__
from traces.checks import Int, MapOf, Optional, TraceError, check_shape, read_json, show
from traces.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
STATUSES = ("recording", "complete", "interrupted")

Manifest = dict[str, Any]

MAX_BYTES = 1 << 50  # 1 PiB: more than any memcg limit or counter
LIMIT = (None, Int(0, MAX_BYTES))
COUNT = Int(0, 2**63 - 1)
# The gfp bits the charge path tests (replay.ops.GfpBits); every kernel's table has them.
CHARGE_PATH_FLAGS = ("__GFP_DIRECT_RECLAIM", "__GFP_NORETRY", "__GFP_RETRY_MAYFAIL", "__GFP_NOFAIL", "__GFP_HIGH", "__GFP_FS",
                     "GFP_KERNEL")
# What readers rely on, checked on open (other keys are free). new_manifest writes all of it.
MANIFEST_SHAPE = {
    "status": str,
    "stop_reason": (None, str),
    "collector": dict,
    "kernel": {"release": (None, str), "page_size": Int(512, 1 << 20), "cpus": (None, Int(1, 1 << 16)),
               # Each CPU's NUMA node, by CPU number; traces from before 2026-12-05 have none, imported ones
               # null (replay takes them as of one node).
               "cpu_nodes": Optional((None, [Int(0, 1 << 10)])),
               # CONFIG_HZ, which the memory.high penalty is counted in; null where the kernel's config
               # was not found (and in imported traces), absent before 2026-12-06 (replay takes 1000).
               "hz": Optional((None, Int(1, 10_000)))},
    "trace_clock": str,
    "start": {"wall": (None, str), "trace_ns": (None, COUNT)},
    "end": {"wall": (None, str), "trace_ns": (None, COUNT)},
    "backend": str,
    "target": {
        "memcg_id": Int(0, 2**64 - 1), "max": Optional(LIMIT), "high": Optional(LIMIT), "high_requested": Optional(LIMIT),
        "ancestors": Optional([{"max": Optional(LIMIT), "high": Optional(LIMIT)}]), "command": Optional((None, [str])),
        # The memcgs seen below the target during the capture (its workload's own): their stat
        # events are recorded as the target's children's, and replayed as the target's.
        "descendants": Optional([{"path": str, "memcg_id": Int(0, 2**64 - 1)}]),
    },
    "gfp_flags": MapOf(Int(0, 2**32 - 1), required=CHARGE_PATH_FLAGS),
    "enums": MapOf(MapOf(Int(-2**31, 2**31 - 1))),
    # spans: when the buffers dropped records, between two drains (collect.lost_spans); traces
    # from before 2026-12-05 have none.
    "lost": {"total": COUNT, "per_cpu": dict, "spans": Optional([{"from_ns": COUNT, "to_ns": COUNT, "events": COUNT}])},
    # Per kind, what its columns meant on the capturing kernel (collect.decode.source_entry);
    # traces from before it was recorded have none.
    "kinds": Optional(MapOf({
        "tracepoint": str, "columns": Optional(MapOf(str)), "inferred": Optional(MapOf(str)), "null": Optional(MapOf(str)),
        "unavailable": Optional(str),
    })),
    "segments": [{"file": str}],
    "events": COUNT,
    # A flight recorder's (collect --max-size): the oldest segments it removed, up to `through`.
    "dropped": Optional({"segments": COUNT, "events": COUNT, "bytes": COUNT, "through": str, "first_ts_ns": COUNT,
                         "last_ts_ns": COUNT, "last_dropped_wall": str}),
}


def losses(manifest: Manifest) -> str | None:
    """What a trace that lost events must say wherever its figures are shown (None: it lost none):
    records the buffers dropped, and calls of the eBPF backend's programs the kernel skipped."""
    said = [_dropped(manifest["lost"]), _skipped(manifest.get("ebpf", {}).get("skipped"))]
    return "; ".join(part for part in said if part) or None


def _dropped(lost: dict) -> str | None:
    if not lost["total"]:
        return None
    spans = lost.get("spans")
    if spans is None:
        return f"the trace lost {lost['total']:,} events, when is not recorded (a trace from before 2026-12-05): figures from it under-count"
    return f"the trace lost {lost['total']:,} events in {_spans(spans)}: figures from it under-count there"


def _skipped(skipped: dict | None) -> str | None:
    """The eBPF backend's skipped calls (collect.ebpf: an interrupt while a program ran); traces
    from before 2026-12-06 do not count them."""
    if not skipped or not skipped["total"]:
        return None
    return (f"the kernel skipped its BPF programs {skipped['total']:,} times in {_spans(skipped['spans'])}, each when an "
            f"interrupt came while one ran: up to as many events are missing there")


def _spans(spans: list[dict]) -> str:
    covered = sum(span["to_ns"] - span["from_ns"] for span in spans) / 1e9
    where = ", ".join(f"{span['from_ns'] / 1e9:.1f}-{span['to_ns'] / 1e9:.1f} s" for span in spans[:3]) + (", ..." if len(spans) > 3 else "")
    return f"{len(spans)} span{'s' if len(spans) != 1 else ''} of {covered:.1f} s ({where} into the capture)"


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def process_start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def cpu_nodes() -> list[int]:
    """Each possible CPU's NUMA node (/sys/devices/system/node/nodeN/cpulist); 0 for a CPU no
    node lists, and for all of them on a kernel without NUMA."""
    nodes = [0] * (os.cpu_count() or 1)
    for node_dir in Path("/sys/devices/system/node").glob("node[0-9]*"):
        node = int(node_dir.name[4:])
        for cpu in cpu_list((node_dir / "cpulist").read_text()):
            nodes.extend([0] * (cpu + 1 - len(nodes)))
            nodes[cpu] = node
    return nodes


def kernel_hz() -> int | None:
    """The running kernel's CONFIG_HZ, from its config (/proc/config.gz, else
    /boot/config-RELEASE); None where neither is found."""
    for path, read in ((Path("/proc/config.gz"), lambda p: gzip.decompress(p.read_bytes()).decode()),
                       (Path(f"/boot/config-{platform.release()}"), Path.read_text)):
        try:
            text = read(path)
        except OSError:
            continue
        match = re.search(r"^CONFIG_HZ=(\d+)$", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def cpu_list(text: str) -> list[int]:
    """The CPUs of a kernel cpulist ("0-3,8,10-11")."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def wall_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_manifest(*, backend: str, clock: str, target: dict, gfp_flags: dict[str, int], enums: dict, kinds: dict | None = None) -> Manifest:
    """The manifest of a capture that is starting now."""
    return {
        "schema_version": SCHEMA_VERSION,
        "chargeplay_version": __version__,
        "status": "recording",
        "stop_reason": None,
        "collector": {"pid": os.getpid(), "boot_id": boot_id(), "start_ticks": process_start_ticks(os.getpid())},
        "kernel": {
            "release": platform.release(),
            "page_size": os.sysconf("SC_PAGE_SIZE"),
            "cpus": os.cpu_count(),
            "cpu_nodes": cpu_nodes(),
            "hz": kernel_hz(),
        },
        "trace_clock": clock,
        "start": {"wall": wall_now(), "trace_ns": None},
        "end": {"wall": None, "trace_ns": None},
        "backend": backend,
        "target": target,
        "gfp_flags": gfp_flags,
        "enums": enums,
        "kinds": kinds or {},
        "lost": {"per_cpu": {}, "total": 0},
        "segments": [],
        "events": 0,
    }


def read_manifest(trace_dir: Path) -> Manifest:
    """The manifest, refused (TraceError) unless it is this schema version's, with every key
    readers rely on of the right type."""
    path = trace_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise TraceError(f"{trace_dir}: no {MANIFEST}; give the directory `chargeplay collect -o` wrote")
    manifest = read_json(trace_dir, path)
    if not isinstance(manifest, dict):
        raise TraceError(f"{path}: not a chargeplay manifest (a JSON object is expected)")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise TraceError(
            f"{path}: trace schema version {show(version)}, this chargeplay reads version {SCHEMA_VERSION}; "
            "use the chargeplay release that wrote it"
        )
    check_shape(manifest, MANIFEST_SHAPE, str(path))
    if manifest["status"] not in STATUSES:
        raise TraceError(f"{path}: unknown status {manifest['status']!r}; expected one of {', '.join(STATUSES)}")
    return manifest


def effective_status(manifest: Manifest) -> str:
    """"recording" only while the collector that wrote it is still alive on this boot."""
    if manifest["status"] != "recording":
        return manifest["status"]
    collector = manifest.get("collector") or {}
    pid = collector.get("pid")
    alive = (
        collector.get("boot_id") == boot_id()
        and isinstance(pid, int)
        and pid > 0
        and process_start_ticks(pid) == collector.get("start_ticks")
    )
    return "recording" if alive else "interrupted"
