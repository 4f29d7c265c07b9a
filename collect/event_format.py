"""Tracepoint record layouts, parsed from tracefs `events/<system>/<name>/format` files.

A format file gives the event id (the `common_type` stored in every record) and,
for each field, its byte offset and size inside the record and whether it is
signed.  `__data_loc` fields are u32s pointing at variable-length data stored
after the fixed part of the record: the low 16 bits are the offset from the
start of the record, the high 16 bits the length (including the NUL of strings).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FIELD_LINE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);(?:\s*signed:(?P<signed>\d+);)?"
)
# The field name is the last identifier of the declaration, before any array brackets.
_FIELD_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\]\s*)*$")


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    signed: bool
    data_loc: bool  # `__data_loc`: u32, low 16 bits offset from record start, high 16 bits length


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]  # including common_type, common_flags, common_preempt_count, common_pid
    print_fmt: str


def read_event_format(events_dir: Path, system: str, name: str) -> EventFormat:
    """Read and parse `events_dir/<system>/<name>/format` (events_dir: a tracefs or instance `events` dir)."""
    return parse_event_format(system, (events_dir / system / name / "format").read_text())


def parse_event_format(system: str, text: str) -> EventFormat:
    """Parse the text of a tracepoint `format` file."""
    name: str | None = None
    event_id: int | None = None
    print_fmt = ""
    fields: dict[str, Field] = {}
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.removeprefix("name:").strip()
        elif line.startswith("ID:"):
            event_id = int(line.removeprefix("ID:").strip())
        elif line.startswith("print fmt:"):
            print_fmt = line.removeprefix("print fmt:").strip()
        elif match := _FIELD_LINE.match(line):
            field = _parse_field(match)
            fields[field.name] = field
    if name is None or event_id is None or not fields:
        raise ValueError(f"not a tracepoint format file (name, ID or fields missing) for system {system!r}")
    return EventFormat(system=system, name=name, id=event_id, fields=fields, print_fmt=print_fmt)


def _parse_field(match: re.Match[str]) -> Field:
    decl = match["decl"].strip()
    name = _FIELD_NAME.search(decl)
    if name is None:
        raise ValueError(f"cannot find the field name in declaration {decl!r}")
    return Field(
        name=name.group(1),
        offset=int(match["offset"]),
        size=int(match["size"]),
        signed=match["signed"] == "1",
        data_loc=decl.startswith("__data_loc"),
    )
