"""manifest.json: what a trace holds and how it was captured.

Written when a capture starts (status "recording"), rewritten as each segment closes,
and finalised as "complete". A trace whose collector died keeps "recording" on disk;
readers report it as "interrupted" (see `effective_status`).
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chargeplay import __version__
from traces.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
STATUSES = ("recording", "complete", "interrupted")

Manifest = dict[str, Any]


class TraceError(ValueError):
    """A trace that cannot be read; the message says what is wrong and what to do."""


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def process_start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def wall_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_manifest(*, backend: str, clock: str, target: dict, gfp_flags: dict[str, int], enums: dict) -> Manifest:
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
        },
        "trace_clock": clock,
        "start": {"wall": wall_now(), "trace_ns": None},
        "end": {"wall": None, "trace_ns": None},
        "backend": backend,
        "target": target,
        "gfp_flags": gfp_flags,
        "enums": enums,
        "lost": {"per_cpu": {}, "total": 0},
        "segments": [],
        "events": 0,
    }


def read_manifest(trace_dir: Path) -> Manifest:
    path = trace_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(f"{trace_dir}: no {MANIFEST}; give the directory `chargeplay collect -o` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TraceError(f"{path}: not valid JSON ({err}); the trace is damaged, re-record it") from None
    if not isinstance(manifest, dict):
        raise TraceError(f"{path}: not a chargeplay manifest (a JSON object is expected)")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceError(
            f"{path}: trace schema version {version!r}, this chargeplay reads version {SCHEMA_VERSION}; "
            "use the chargeplay release that wrote it"
        )
    if manifest.get("status") not in STATUSES:
        raise TraceError(f"{path}: unknown status {manifest.get('status')!r}; expected one of {', '.join(STATUSES)}")
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
