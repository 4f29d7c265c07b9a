"""`chargeplay import`: a trace made of what perf or trace-cmd recorded.

The records `perf script` and `trace-cmd report` print (traces.tool_text) are rebuilt in the
binary layout the collector's decoder reads: a format per tracepoint with the fields the text
has (under the tracepoint's own field names), the record header's pid and, where trace-cmd's
latency columns show it, the interrupt context in common_flags. collect.decode then makes
them the rows a capture makes: the same kinds and columns, accounted as the kernel says,
objects and pages as pseudonyms, call sites as ids into symbols.parquet (holding the symbols
the tool printed; one it printed as an address is "?", the address is not kept), frees kept
as the collector keeps them, stat events of the trace's memcg only.

What the tools did not record is said, not guessed (the manifest's `imported`):
- the kernel: gfp flags are read by name with this machine's table (a name it lacks gets a
  bit of its own), memcg stat items are the recording kernel's enum values and are decoded
  with this machine's enums: import on the kernel that recorded. kernel.release is null;
- memcg membership: the trace's memcg is --memcg-id, or the memcg most stat events name;
- limits: --memory-max and --memory-high, else none (replay then asks for them);
- the memcg's counters (memcg.parquet) and slab geometry (slabs.parquet): none; replay gives
  a cache it has no geometry for order-0 slabs of its object size;
- the interrupt context, where the text has no latency columns (perf script): ctx is null,
  which replay takes as task context.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from collect.decode import NO_PFN, STAT_KINDS, TRACEPOINT_KINDS, Decoder
from collect.event_format import EventFormat, Field
from collect.kernel_tables import read_gfp_table, read_kernel_enums
from collect.lost_spans import add_lost
from collect.ringbuf import RawEvents
from collect.symbols import CallSites
from collect.tracefs import tracefs_root
from collect.tracefs_collector import FREE_EVENTS, MEMCG_EVENTS, TASK_EVENTS
from traces.atomic import check_new_output, make_private_dir, write_json, write_parquet
from traces.errors import UserError
from traces.gfp import gfp_bit
from traces.manifest import MANIFEST, Manifest, new_manifest
from traces.schema import SYMBOL_COLUMNS, table_schema
from traces.segments import Segment, SegmentWriter
from traces.tool_text import (COMMANDS, CONTEXT_FLAGS, DATA_FILES, STRING, TEXT_FIELDS, TOOLS, UNSIGNED, GfpNames, Line, Loss,
                              field_texts, is_address, looks_like, parse_value, read_lines)

TRACEPOINTS = TASK_EVENTS + MEMCG_EVENTS + FREE_EVENTS  # what the tracefs collector records
STAT_TRACEPOINTS = {tracepoint for tracepoint, kind in TRACEPOINT_KINDS.items() if kind in STAT_KINDS}
MEMCG_ID = re.compile(r"\bmemcg_id=(\d+)")  # the stat tracepoints' memcg, as their print fmt names it
BATCH_LINES = 64 * 1024  # decoded and written at a time
# The binary files the tools read, by the magic they start with, and the commands that print them.
MAGIC = {"perf-script": b"PERFILE2", "trace-cmd": b"\x17\x08Dtracing"}
PRINTERS = {"perf-script": ["perf", "script", "--ns", "--show-lost-events", "-i"],
            "trace-cmd": ["trace-cmd", "report", "-t", "-l", "-i"]}  # -t: ns; -l: the latency columns (context)
PACKAGES = {"perf-script": "linux-perf", "trace-cmd": "trace-cmd"}  # Debian's
# Fields a print fmt computes that are no field of the tracepoint: left to the decoder's own rule.
PRINTED_ONLY = {("kmem", "kmalloc"): {"accounted"}}  # gfp_flags & __GFP_ACCOUNT
ZERO_SIZE_PTR = 16  # a kfree of NULL or of it frees nothing: the collector's kernel filter drops them (free_filter)
# The record header, as the kernel lays it out (events/header_event's common fields).
HEADER = {"common_type": Field("common_type", 0, 2, False, False), "common_flags": Field("common_flags", 2, 1, False, False),
          "common_preempt_count": Field("common_preempt_count", 3, 1, False, False),
          "common_pid": Field("common_pid", 4, 4, True, False)}
HEADER_SIZE = 8

Progress = Callable[[str, int, int | None], None]  # step, bytes done, bytes in all (None: unknown)


@dataclass
class Scan:
    """What a first pass over the text finds: the tracepoints it has and each one's fields (as
    its first line shows them), whether it shows the interrupt context, the memcgs its stat
    events name, and its span."""

    fields: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    contexts: bool = True
    memcgs: Counter = field(default_factory=Counter)
    lines: int = 0
    cpus: int = 0
    first_ns: int = 0
    last_ns: int = 0


@dataclass(frozen=True)
class Layout:
    """One tracepoint's records as rebuilt: their format, and the text's fields in it (text
    name, field name, how the value reads), numbers first, then the strings after `fixed` bytes."""

    fmt: EventFormat
    fields: list[tuple[str, str, str]]
    fixed: int

    @cached_property
    def at(self) -> dict[str, int]:
        """Where each field is in a record's values."""
        return {name: index for index, (_, name, _) in enumerate(self.fields)}


def import_trace(source: Path, tool: str, output: Path, memory_max: int | None, memory_high: int | None,
                 memcg_id: int | None, progress: Progress, say: Callable[[str], None]) -> Manifest:
    """Write the trace of `tool`'s text (or of the file it reads) at `source` to `output` (new)."""
    if tool not in TOOLS:
        raise UserError(f"--from {tool}: choose one of {', '.join(TOOLS)}")
    if not source.is_file():
        raise UserError(f"{source}: {'not a file' if source.exists() else 'no such file'}; give the text {COMMANDS[tool]} printed, "
                        f"or the {DATA_FILES[tool]} file it reads")
    if memcg_id is not None and memcg_id < 0:
        raise UserError(f"--memcg-id {memcg_id}: a memcg's id is its cgroup directory's inode number (stat -c %i DIR)")
    check_new_output(output)
    gfp_flags, enums = _kernel_tables()
    with _text_of(source, tool, progress) as text:
        scan = _scan(text, tool, progress)
        memcg = _memcg(scan, memcg_id)
        made = not output.exists()
        make_private_dir(output)
        try:
            importing = _Import(text, tool, output, scan, gfp_flags, enums)
            manifest = importing.run(source, memory_max, memory_high, memcg, progress)
        except BaseException:
            _discard(output, made)  # nothing half-imported is left to be taken for a trace
            raise
    for note in [*memcg.notes, *importing.notes]:  # once it worked: a refusal is its one line
        say(note)
    return manifest


def _kernel_tables() -> tuple[dict[str, int], dict]:
    """This machine's gfp flag table and enums: the text names flags, which need a table to be bits."""
    try:
        return read_gfp_table(tracefs_root()), read_kernel_enums()
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"import reads gfp flags and stat items with this machine's kernel tables, and cannot read them "
                        f"({error}); run it as root on Linux with tracefs and BTF, best on the kernel that recorded") from None


@dataclass(frozen=True)
class Text:
    path: Path
    label: str  # what messages call it: the file given, or the tool's output of it


@contextmanager
def _text_of(source: Path, tool: str, progress: Progress) -> Iterator[Text]:
    """The text to import: `source` itself, or what the tool prints of the binary file it is."""
    with open(source, "rb") as start:
        head = start.read(16)
    made_by = next((name for name, magic in MAGIC.items() if head.startswith(magic)), None)
    if made_by is None:
        yield Text(source, str(source))
        return
    if made_by != tool:
        raise UserError(f"{source} is a {DATA_FILES[made_by]} file, not {tool}'s; give --from {made_by}")
    printer = PRINTERS[tool]
    if shutil.which(printer[0]) is None:
        raise UserError(f"{source} is a {DATA_FILES[tool]} file, and reading it needs {printer[0]}, which is not installed: "
                        f"install it (Debian package {PACKAGES[tool]}), or import the text `{COMMANDS[tool]}` printed")
    progress(f"running {COMMANDS[tool]}", 0, None)
    with tempfile.TemporaryDirectory(prefix="chargeplay-import-") as scratch:
        text = Path(scratch) / "text"
        with open(text, "wb") as out:
            printed = subprocess.run([*printer, str(source)], stdout=out, stderr=subprocess.PIPE, text=True)
        if printed.returncode != 0:
            said = (printed.stderr.strip().splitlines() or [f"exit code {printed.returncode}"])[-1]
            raise UserError(f"{' '.join(printer)} {source} failed: {said}; check the file, or import its text instead")
        yield Text(text, f"the output of {' '.join(printer)} {source}")


def _scan(text: Text, tool: str, progress: Progress) -> Scan:
    """The first pass: what the text has, checked to be in time order."""
    scan, total, previous = Scan(), text.path.stat().st_size, None
    for line in read_lines(text.path, tool, TRACEPOINTS, lambda done: progress("reading", done, total)):
        if isinstance(line, Loss):
            continue
        if previous is not None and line.ts_ns < previous.ts_ns:
            raise UserError(f"{text.label} line {line.number}: its time is earlier than line {previous.number}'s: the text is not "
                            f"in time order; give {COMMANDS[tool]}'s output as it prints it (sorted by time)")
        if line.tracepoint not in scan.fields:
            scan.fields[line.tracepoint] = list(field_texts(line.fields))
        if line.tracepoint in STAT_TRACEPOINTS:
            memcg = MEMCG_ID.search(line.fields)
            scan.memcgs[memcg and int(memcg.group(1))] += 1
        scan.contexts &= line.context is not None
        scan.first_ns = scan.first_ns if scan.lines else line.ts_ns
        scan.last_ns, scan.cpus, scan.lines, previous = line.ts_ns, max(scan.cpus, line.cpu + 1), scan.lines + 1, line
    if not scan.lines:
        raise UserError(_nothing_to_import(text, tool))
    return scan


def _nothing_to_import(text: Text, tool: str) -> str:
    """Why a file gave no record to import, and what to give instead."""
    other = next(name for name in TOOLS if name != tool)
    if looks_like(text.path, tool):
        events = ", ".join(f"{system}:{event}" for system, event in TRACEPOINTS)
        return f"{text.label}: no records of the events chargeplay imports ({events}); record those"
    if looks_like(text.path, other):
        return f"{text.label} is {COMMANDS[other]} text, not {COMMANDS[tool]}'s; give --from {other}"
    return f"{text.label}: not {COMMANDS[tool]} text (no line reads as one of its records); give the text it printed"


@dataclass(frozen=True)
class Memcg:
    id: int | None  # None: the text has no stat events
    chosen_by: str  # the manifest's imported.memcg
    notes: list[str]


def _memcg(scan: Scan, chosen: int | None) -> Memcg:
    """The trace's memcg: `chosen`, else the one most stat events name (a note says so)."""
    if chosen is not None:
        return Memcg(chosen, "--memcg-id", [])
    named = Counter({memcg_id: events for memcg_id, events in scan.memcgs.items() if memcg_id is not None})
    if not named:
        return Memcg(None, "no stat events", [])
    memcg_id, events = named.most_common(1)[0]
    why = f"the memcg most stat events name ({events:,} of {named.total():,})"
    others = len(named) - 1
    return Memcg(memcg_id, why, [f"memcg: the trace's is id {memcg_id}, {why} (--memcg-id chooses); the stat events of the "
                                 f"{others} others are left out"] if others else [])


def _discard(output: Path, made: bool) -> None:
    for path in output.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if made:
        output.rmdir()


def _layout(type_id: int, tracepoint: tuple[str, str], texts: list[str], contexts: bool) -> Layout:
    """The format of a tracepoint's rebuilt records: the header, then each field the text has."""
    skipped = PRINTED_ONLY.get(tracepoint, set())
    known = sorted(((text, *TEXT_FIELDS[text]) for text in texts if text in TEXT_FIELDS and text not in skipped),
                   key=lambda spec: spec[2] == STRING)
    fields = {name: spec for name, spec in HEADER.items() if contexts or name != "common_flags"}
    offset = HEADER_SIZE
    for _, name, kind in known:
        size = 4 if kind == STRING else 8  # a string is a __data_loc: where it is and how long
        fields[name] = Field(name, offset, size, kind not in (*UNSIGNED, STRING), kind == STRING)
        offset += size
    return Layout(EventFormat(tracepoint[0], tracepoint[1], type_id, fields, ""), known, offset)


def _bytes(values: np.ndarray) -> np.ndarray:
    """Each value's bytes, a row per value."""
    return np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)


def _pack(layout: Layout, pids: list[int], flags: list[int], values: list[list[int | str]]) -> np.ndarray:
    """The records of one tracepoint, a row each: header, fields, then the strings."""
    columns = list(zip(*values))
    strings = {name: [text.encode() for text in column] for column, (_, name, kind) in zip(columns, layout.fields) if kind == STRING}
    widths = {name: max(map(len, encoded)) + 1 for name, encoded in strings.items()}  # with the NUL
    block = np.zeros((len(pids), -(-(layout.fixed + sum(widths.values())) // 4) * 4), np.uint8)
    block[:, 0:2] = _bytes(np.full(len(pids), layout.fmt.id, "<u2"))
    block[:, 2] = flags
    block[:, 4:8] = _bytes(np.array(pids, "<i4"))
    at = layout.fixed
    for column, (_, name, kind) in zip(columns, layout.fields):
        spec = layout.fmt.fields[name]
        if kind == STRING:
            lengths = np.array([len(text) + 1 for text in strings[name]], np.uint32)
            block[:, spec.offset:spec.offset + 4] = _bytes((at | lengths << 16).astype("<u4"))
            block[:, at:at + widths[name]] = _bytes(np.array(strings[name], f"S{widths[name]}"))
            at += widths[name]
        else:
            block[:, spec.offset:spec.offset + 8] = _bytes(np.array(column, "<i8" if spec.signed else "<u8"))
    return block


class _Batch:
    """Up to BATCH_LINES records, by tracepoint, until they are handed to the decoder as RawEvents."""

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.cpu: list[int] = []
        self.type_id: list[int] = []
        self.comms: dict[int, str] = {}  # each task's name at its first record here
        self.records: dict[int, tuple[list[int], list[int], list[int], list[list[int | str]]]] = {}  # rows, pids, flags, values

    def add(self, line: Line, type_id: int, flags: int, values: list[int | str]) -> None:
        rows, pids, all_flags, all_values = self.records.setdefault(type_id, ([], [], [], []))
        rows.append(len(self.ts))
        pids.append(line.pid)
        all_flags.append(flags)
        all_values.append(values)
        self.ts.append(line.ts_ns)
        self.cpu.append(line.cpu)
        self.type_id.append(type_id)
        if line.comm is not None:
            self.comms.setdefault(line.pid, line.comm)

    def raw(self, layouts: dict[int, Layout]) -> RawEvents:
        start, length = np.zeros(len(self.ts), np.int64), np.zeros(len(self.ts), np.int32)
        blocks, base = [], 0
        for type_id, (rows, pids, flags, values) in self.records.items():
            block = _pack(layouts[type_id], pids, flags, values)
            start[rows] = base + np.arange(len(rows)) * block.shape[1]
            length[rows] = block.shape[1]
            base += block.size
            blocks.append(block.reshape(-1))
        return RawEvents(ts=np.array(self.ts, np.uint64), cpu=np.array(self.cpu, np.uint16), type_id=np.array(self.type_id, np.uint16),
                         start=start, length=length, data=np.concatenate(blocks) if blocks else np.zeros(0, np.uint8), missed=0)


class _Import:
    """The second pass: the text's records, rebuilt and decoded batch by batch into segments."""

    def __init__(self, text: Text, tool: str, output: Path, scan: Scan, gfp_flags: dict[str, int], enums: dict) -> None:
        self.text, self.tool, self.output, self.scan = text, tool, output, scan
        self.notes: list[str] = []  # what the trace could not get from the text
        self.layouts = {type_id: _layout(type_id, tracepoint, texts, scan.contexts)
                        for type_id, (tracepoint, texts) in enumerate(scan.fields.items(), start=1)}
        self.type_ids = {(layout.fmt.system, layout.fmt.name): type_id for type_id, layout in self.layouts.items()}
        self.gfp, self.symbols = GfpNames(gfp_flags), {}  # the text's call sites, numbered from 1 in order of appearance
        self.context_flags = {context: sum(enums["trace_flag_type"][flag] for flag in names)
                              for context, names in CONTEXT_FLAGS.items()}
        self.enums = enums
        self.lost_spans: list[dict] = []
        self.lost_per_cpu: Counter = Counter()

    def run(self, source: Path, memory_max: int | None, memory_high: int | None, memcg: Memcg, progress: Progress) -> Manifest:
        decoder = Decoder(formats={type_id: (TRACEPOINT_KINDS[tracepoint], self.layouts[type_id].fmt)
                                   for tracepoint, type_id in self.type_ids.items()},
                          gfp_account=gfp_bit(self.gfp.table, "__GFP_ACCOUNT"), trace_flags=self.enums["trace_flag_type"],
                          t0=self.scan.first_ns,
                          in_target=None if memcg.id is None else lambda ids: ids == np.uint64(memcg.id))
        self.notes += [f"{name}: its records are left out: {why} in the text" for name, why in decoder.unavailable.items()]
        if not self.scan.contexts:
            self.notes.append("the text shows no interrupt context (trace-cmd report -l does): ctx is null, which replay takes "
                              "as task context")
        self.manifest = self._manifest(source, decoder, memory_max, memory_high, memcg)
        write_json(self.output / MANIFEST, self.manifest)
        writer = SegmentWriter(self.output, self._segment_closed, max_seconds=math.inf)
        try:
            self._convert(decoder, writer, progress)
            writer.close_segment()
        except BaseException:
            writer.abort()
            raise
        write_parquet(self.output / "symbols.parquet", self._symbol_table(decoder.call_sites))
        self.manifest["status"] = "complete"
        self.manifest["stop_reason"] = f"imported {self.scan.lines:,} records of {source.name}"
        self.manifest["lost"] = {"per_cpu": {str(cpu): n for cpu, n in sorted(self.lost_per_cpu.items())},
                                 "total": sum(self.lost_per_cpu.values()), "spans": self.lost_spans}
        write_json(self.output / MANIFEST, self.manifest)
        return self.manifest

    def _convert(self, decoder: Decoder, writer: SegmentWriter, progress: Progress) -> None:
        total, batch, lost, last_ns = self.text.path.stat().st_size, _Batch(), 0, self.scan.first_ns
        for line in read_lines(self.text.path, self.tool, self.type_ids, lambda done: progress("importing", done, total)):
            if isinstance(line, Loss):
                self.lost_per_cpu[line.cpu] += line.events
                lost += line.events
                continue
            if lost:  # the tool dropped them between the records either side
                add_lost(self.lost_spans, last_ns - self.scan.first_ns, line.ts_ns - self.scan.first_ns, lost)
                lost = 0
            last_ns = line.ts_ns
            type_id = self.type_ids[line.tracepoint]
            layout = self.layouts[type_id]
            values, at = self._values(line, layout), layout.at
            if line.tracepoint == ("kmem", "kfree") and "ptr" in at and values[at["ptr"]] <= ZERO_SIZE_PTR:
                continue
            if line.tracepoint == ("kmem", "mm_page_alloc") and "pfn" in at and values[at["pfn"]] == 0:
                values[at["pfn"]] = int(NO_PFN)  # the print fmt shows a failed allocation's -1 as 0
            batch.add(line, type_id, self.context_flags[line.context] if self.scan.contexts else 0, values)
            if len(batch.ts) == BATCH_LINES:
                self._decode(decoder, writer, batch)
                batch = _Batch()
        if lost:
            add_lost(self.lost_spans, last_ns - self.scan.first_ns, last_ns - self.scan.first_ns, lost)
        self._decode(decoder, writer, batch)

    def _values(self, line: Line, layout: Layout) -> list[int | str]:
        """The record's field values in the layout's order; UserError naming the line where one
        is missing or unreadable."""
        texts = field_texts(line.fields)
        values = []
        for text, name, kind in layout.fields:
            if text not in texts:
                raise UserError(f"{self.text.label} line {line.number}: {':'.join(line.tracepoint)} without {text}=, which its "
                                "first record has; give the text as the tool printed it")
            try:
                values.append(parse_value(kind, texts[text], self.symbols, self.gfp))
            except ValueError as error:
                raise UserError(f"{self.text.label} line {line.number}: {text}={texts[text]} is not understood ({error})") from None
        return values

    def _decode(self, decoder: Decoder, writer: SegmentWriter, batch: _Batch) -> None:
        if not batch.ts:
            return
        decoder.comms.update(batch.comms)  # the text names every record's task: the names it had then
        writer.write(decoder.decode(batch.raw(self.layouts)))

    def _segment_closed(self, segment: Segment) -> None:
        self.manifest["segments"].append(segment.__dict__)
        self.manifest["events"] += segment.events
        write_json(self.output / MANIFEST, self.manifest)

    def _symbol_table(self, call_sites: CallSites) -> pa.Table:
        """Call-site id to the symbol the tool printed; "?" for one it printed as an address."""
        names = list(self.symbols)  # a call site's number is its place here, from 1
        ids = sorted(call_sites.ids.items(), key=lambda item: item[1])
        return pa.table({"id": [i for _, i in ids], "symbol": ["?" if is_address(names[n - 1]) else names[n - 1] for n, _ in ids]},
                        schema=table_schema(SYMBOL_COLUMNS))

    def _manifest(self, source: Path, decoder: Decoder, memory_max: int | None, memory_high: int | None, memcg: Memcg) -> Manifest:
        where = f"not in the {COMMANDS[self.tool]} text"
        kinds = dict(decoder.sources)
        for tracepoint in TRACEPOINTS:
            kind = TRACEPOINT_KINDS[tracepoint]
            if kind is not None and kind not in kinds:
                name = ":".join(tracepoint)
                kinds[kind] = {"tracepoint": name, "unavailable": decoder.unavailable.get(name, where)}
        target = {"cgroup_path": None, "cgroup_version": None, "memcg_id": memcg.id or 0, "max": memory_max, "high": memory_high,
                  "high_requested": None, "ancestors": [], "command": None, "descendants": []}
        manifest = new_manifest(backend=f"import:{self.tool}", clock=f"{self.tool}'s, the text does not say which", target=target,
                                gfp_flags=self.gfp.table, enums=self.enums, kinds=kinds)
        # the text names neither a CPU's NUMA node nor the kernel's HZ
        manifest["kernel"].update(release=None, cpus=self.scan.cpus, cpu_nodes=None, hz=None)
        manifest["start"] = {"wall": None, "trace_ns": self.scan.first_ns}
        manifest["end"] = {"wall": None, "trace_ns": self.scan.last_ns}
        manifest["addresses_kept"] = False
        manifest["slab_allocations"] = "all"  # as the tool recorded them
        manifest["imported"] = {
            "from": self.tool, "file": source.name,
            "kernel_tables": f"gfp flags by name and stat items decoded with the tables of the importing machine's kernel "
                             f"({os.uname().release}); the text does not say which kernel recorded it",
            "memcg": memcg.chosen_by,
            "not_recorded": "the kernel release, cgroup path and limits (unless given), the memcg's counters (no memcg.parquet), "
                            "slab geometry (no slabs.parquet)",
        }
        return manifest
