"""The text of `perf script` and `trace-cmd report`: one line per tracepoint record.

Each line says who and when (task name, pid, CPU, seconds), which event, then the record's
fields as the tracepoint's print fmt renders them: `name=value` pairs, gfp flags by name
(GFP_KERNEL|__GFP_ACCOUNT), call sites as symbols (alloc_inode+0x1c), pointers in hex.

    perf script:       python3   483 [000] 43080.062955: kmem:kmalloc: call_site=... ptr=0x...
    trace-cmd report:  python3-2524  [001] 43132.236621: kmalloc: (alloc_bprm+0x45) call_site=...
    trace-cmd report -l: python3-2524    1..s1. 43132.236621: ...   (the latency columns)

Both drift between versions (perf's optional pid/ before the tid and period before the event,
trace-cmd's instance prefix, its kmem plugin's "(call site)" before the fields, the latency
columns), so lines are matched tolerantly, as damo reads them: other events' lines, call chains
and the tools' own notes are skipped; the losses they report are returned as such.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from traces.errors import UserError

TOOLS = ("perf-script", "trace-cmd")
COMMANDS = {"perf-script": "perf script", "trace-cmd": "trace-cmd report"}
DATA_FILES = {"perf-script": "perf.data", "trace-cmd": "trace.dat"}  # what each reads

_TIME = r"(?P<sec>\d+)\.(?P<frac>\d{1,9}):"
_LINES = {
    # COMM [PID/]TID [CPU] SECONDS: [PERIOD] SYSTEM:EVENT: FIELDS
    "perf-script": re.compile(r"^\s*(?P<comm>.*?)\s+(?:-?\d+/)?(?P<pid>-?\d+)\s+(?:\[(?P<cpu>\d+)\]\s+)?"
                              + _TIME + r"\s+(?:\d+\s+)?(?P<system>\w+):(?P<event>\w+):\s?(?P<fields>.*)$"),
    # [INSTANCE: ] COMM-PID [CPU] SECONDS: EVENT: FIELDS, or with -l: COMM-PID CPU+LATENCY SECONDS: ...
    "trace-cmd": re.compile(r"^(?:[\w.-]+:\s+)?\s*(?P<comm>.*?)-(?P<pid>\d+)\s+"
                            r"(?:\[(?P<cpu>\d+)\]|(?P<lat_cpu>\d+)(?P<latency>[^\s\d]\S*))\s+"
                            + _TIME + r"\s+(?P<event>\w+):\s*(?P<fields>.*)$"),
}
# Where a tool says its buffers dropped records: perf script --show-lost-events, and trace-cmd
# report (3.x: "CPU:1 [9062 EVENTS DROPPED]", without a count where the kernel kept none; 2.x
# "[LOST 12 EVENTS]"). A loss without a count counts one, a lower bound.
_LOSSES = {
    "perf-script": re.compile(r"\[(?P<cpu>\d+)\]\s+" + _TIME + r"\s+PERF_RECORD_LOST lost:? (?P<events>\d+)"),
    "trace-cmd": re.compile(r"CPU:\s*(?P<cpu>\d+)\s*\[(?:LOST (?:(?P<events>\d+) )?EVENTS|(?:(?P<dropped>\d+) )?EVENTS DROPPED)\]"),
}
_KEY = re.compile(r"(?:^|\s)([A-Za-z_][\w-]*)=")
_SYSCALL_EXIT = re.compile(r"^NR (-?\d+) = (-?\d+)")  # raw_syscalls:sys_exit's print fmt names no field

# How the fields read from the text are printed (other fields are skipped): the tracepoint field
# each is (the text's memcg_id is the field id) and how its value reads.
NUMBER, ADDRESS, HEX, SYMBOL, GFP, BOOL, STRING = "number", "address", "hex", "symbol", "gfp", "bool", "string"
TEXT_FIELDS = {
    "call_site": ("call_site", SYMBOL),  # %pS: a symbol, or 0x... where the tool could not name it
    "ptr": ("ptr", ADDRESS),  # %p: 0x..., (nil) for NULL
    "pfn": ("pfn", ADDRESS),  # 0x%lx (older kernels %lu); the print fmt shows 0 for a failed allocation
    "bytes_req": ("bytes_req", NUMBER),
    "bytes_alloc": ("bytes_alloc", NUMBER),
    "gfp_flags": ("gfp_flags", GFP),
    "node": ("node", NUMBER),
    "accounted": ("accounted", BOOL),
    "name": ("name", STRING),
    "order": ("order", NUMBER),
    "memcg_id": ("id", NUMBER),
    "item": ("item", NUMBER),
    "val": ("val", NUMBER),
    "nr_reclaimed": ("nr_reclaimed", NUMBER),
    "id": ("id", NUMBER),  # sys_exit's syscall number ("NR 1 = 2"; id=1 in trace-cmd report -R)
    "pid": ("pid", NUMBER),
    "comm": ("comm", STRING),
    "clone_flags": ("clone_flags", HEX),  # %llx, no 0x
    "filename": ("filename", STRING),
    "newcomm": ("newcomm", STRING),
}
UNSIGNED = (ADDRESS, HEX, SYMBOL, GFP)  # full 64-bit values: the others are signed
# The latency columns' interrupt context (libtraceevent's data_latency_format, the kernel's
# trace_print_lat_fmt): the trace_flag_type flags it stands for. "." is task context.
CONTEXT_FLAGS = {".": (), "s": ("TRACE_FLAG_SOFTIRQ",), "h": ("TRACE_FLAG_HARDIRQ",), "H": ("TRACE_FLAG_HARDIRQ", "TRACE_FLAG_SOFTIRQ"),
                 "z": ("TRACE_FLAG_NMI",), "Z": ("TRACE_FLAG_NMI", "TRACE_FLAG_HARDIRQ")}
UNKNOWN_COMM = "<...>"  # trace-cmd's name for a task whose name it did not save
MAX_LINE = 1 << 20  # bytes: a record's line is a few hundred


@dataclass(frozen=True)
class Line:
    """One record of a tracepoint the caller asked for, as the text shows it."""

    number: int  # line number in the file, from 1
    ts_ns: int  # the tool's clock, ns
    cpu: int
    pid: int
    comm: str | None
    context: str | None  # CONTEXT_FLAGS key from the latency columns; None where the text has none
    tracepoint: tuple[str, str]  # (system, event)
    fields: str  # the rest of the line: the record's fields


@dataclass(frozen=True)
class Loss:
    """Where the tool says records were dropped."""

    number: int
    cpu: int
    events: int


def read_lines(path: Path, tool: str, tracepoints: Iterable[tuple[str, str]],
               progress: Callable[[int], None] = lambda done: None) -> Iterator[Line | Loss]:
    """The records of `tracepoints` and the losses in `tool`'s text at `path`, in file order.
    `progress` is told the bytes read every 64 Ki lines. UserError where the file is no text."""
    pattern, losses = _LINES[tool], _LOSSES[tool]
    wanted = set(tracepoints)
    by_name = {event: (system, event) for system, event in wanted}  # trace-cmd names the event alone
    read = 0
    with open(path, "rb") as lines:
        # in pieces of at most MAX_LINE bytes: a binary file may have no line end for gigabytes
        for number, raw in enumerate(iter(lambda: lines.readline(MAX_LINE), b""), start=1):
            read += len(raw)
            if number % 65536 == 0:
                progress(read)
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise UserError(f"{path} line {number}: not text; give the text {COMMANDS[tool]} printed "
                                f"(or the {DATA_FILES[tool]} file it read)") from None
            match = pattern.match(text)
            if match is None:
                loss = losses.search(text)
                if loss is not None:
                    counts = loss.groupdict()
                    yield Loss(number, int(counts["cpu"]), int(counts.get("events") or counts.get("dropped") or 1))
                continue
            got = match.groupdict()
            tracepoint = (got["system"], got["event"]) if tool == "perf-script" else by_name.get(got["event"])
            if tracepoint not in wanted:
                continue
            latency, comm = got.get("latency"), got["comm"].strip()
            yield Line(number, int(got["sec"]) * 1_000_000_000 + int(got["frac"].ljust(9, "0")),
                       int(got["cpu"] or got.get("lat_cpu") or 0), int(got["pid"]), None if comm in ("", UNKNOWN_COMM) else comm,
                       latency[2] if latency and len(latency) > 2 and latency[2] in CONTEXT_FLAGS else None,
                       tracepoint, got["fields"].rstrip())
    progress(read)


def looks_like(path: Path, tool: str, lines: int = 1000) -> bool:
    """Whether one of the first `lines` lines of `path` is a record line of `tool`'s text (to
    say which tool wrote a file given with the other's name)."""
    with open(path, "rb") as text:
        return any(_LINES[tool].match(text.readline(MAX_LINE).decode(errors="replace")) for _ in range(lines))


def field_texts(fields: str) -> dict[str, str]:
    """The `name=value` pairs of a record's fields, as text: a string value runs up to the next
    name (a task name may hold spaces), any other is its first word."""
    syscall = _SYSCALL_EXIT.match(fields)
    if syscall is not None:
        return {"id": syscall.group(1), "ret": syscall.group(2)}
    parts = _KEY.split(fields)  # what precedes the first name, then name, value, name, value...
    values = {}
    for name, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        values[name] = value.split(" ", 1)[0] if " " in value and TEXT_FIELDS.get(name, ("", STRING))[1] != STRING else value
    return values


def parse_value(kind: str, text: str, symbols: dict[str, int], gfp: "GfpNames") -> int | str:
    """A field's value: an integer (a call site: its number in `symbols`, which grows), or a
    string. ValueError where the text is not such a value."""
    if kind == STRING:
        return text
    if kind == SYMBOL:
        return symbols.setdefault(text, len(symbols) + 1)  # 0 would be no call site
    if kind == GFP:
        return gfp.bits(text)
    if kind == BOOL:
        if text not in ("true", "false", "1", "0"):
            raise ValueError("neither true nor false")
        return int(text in ("true", "1"))
    if text == "(nil)":
        return 0
    base = 16 if kind == HEX or text.lower().startswith(("0x", "-0x")) or (kind == ADDRESS and not text.isdigit()) else 10
    try:
        value = int(text, base)
    except ValueError:
        raise ValueError(f"not a {'hexadecimal ' if base == 16 else ''}number") from None
    if kind in (ADDRESS, HEX):
        return value & (1 << 64) - 1
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError("out of range")
    return value


def is_address(symbol: str) -> bool:
    """A call site the tool printed as a raw address (no symbol covered it): never stored."""
    return re.fullmatch(r"(0x)?[0-9a-fA-F]+", symbol) is not None


class GfpNames:
    """gfp flag names to bits with a kernel's table (traces.gfp, in kernel order). A name the table
    lacks (the text's kernel had it, this one has not) gets a bit of its own, from the top down
    among those the table leaves free, and joins the table: its allocations keep it by name."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table
        self.parsed: dict[str, int] = {"none": 0, "0": 0, "": 0}  # kmalloc prints "none" for no flags

    def bits(self, text: str) -> int:
        if text not in self.parsed:
            self.parsed[text] = self._bits(text)
        return self.parsed[text]

    def _bits(self, text: str) -> int:
        bits = 0
        for name in text.split("|"):
            if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", name):  # bits no name covered, or the raw value
                bits |= int(name, 0)
            else:
                bits |= self.table[name] if name in self.table else self._new_bit(name)
        return bits

    def _new_bit(self, name: str) -> int:
        used = 0
        for mask in self.table.values():
            used |= mask
        free = [bit for bit in range(31, -1, -1) if not used >> bit & 1]
        if not re.fullmatch(r"\w+", name):
            raise ValueError(f"{name!r} is no gfp flag name")
        if not free:
            raise ValueError(f"gfp flag {name!r} is not in this kernel's table and no bit is left for it")
        self.table[name] = 1 << free[0]
        return self.table[name]
