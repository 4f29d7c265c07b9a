"""Writes the committed corpus: `tiny-trace/` (the first 200 events of the file-storm sample,
a valid trace that replays) and `bad-traces/NAME/`, each tiny-trace with one thing wrong,
said in its why.txt. Run from the repository root: .venv/bin/python tests/corpus/make_corpus.py
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from traces.atomic import write_json, write_parquet
from traces.manifest import MANIFEST
from traces.reader import Trace
from traces.samples import sample_path
from traces.schema import EVENT_SCHEMA, SCHEMA_VERSION_KEY
from traces.segments import SegmentWriter

CORPUS = Path(__file__).parent
TINY = CORPUS / "tiny-trace"
SEGMENT = "events/part-000000.parquet"
EVENTS = 200


def make_tiny(path: Path) -> None:
    """The first EVENTS events of file-storm, with the side-table rows they use."""
    sample = Trace.open(sample_path("file-storm"))
    events = sample.events().head(EVENTS).collect()
    manifest = dict(sample.manifest, segments=[], events=0, stop_reason="first 200 events of file-storm")
    lru = ("NR_FILE_PAGES", "NR_ANON_MAPPED")  # the enum entries replay reads: a smaller manifest
    manifest["enums"] = {"node_stat_item": {name: sample.manifest["enums"]["node_stat_item"][name] for name in lru}}

    def closed(segment) -> None:
        manifest["segments"].append(segment.__dict__)
        manifest["events"] += segment.events

    writer = SegmentWriter(path, closed)
    writer.write(events.to_arrow().cast(EVENT_SCHEMA))
    writer.close_segment()
    side = {
        "memcg": sample.side_table("memcg").head(3),
        "slabs": sample.side_table("slabs").filter(pl.col("name").is_in(events["cache"].drop_nulls().unique().implode())),
        "symbols": sample.side_table("symbols").filter(pl.col("id").is_in(events["call_site"].drop_nulls().unique().implode())),
    }
    for name, table in side.items():
        source = pq.read_schema(sample.path / f"{name}.parquet")
        write_parquet(path / f"{name}.parquet", table.collect().to_arrow().cast(source))
    write_json(path / MANIFEST, manifest)


def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        manifest = json.loads((path / MANIFEST).read_text())
        change(manifest)
        (path / MANIFEST).write_text(json.dumps(manifest))
    return edit


def edit_table(name: str, change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    """Rewrite a Parquet file of the trace with `change` applied, keeping its metadata."""
    def edit(path: Path) -> None:
        table = pq.read_table(path / name)
        pq.write_table(change(table), path / name)
    return edit


def set_cell(column: str, row: int | str, value: object, dtype: pa.DataType | None = None) -> Callable[[pa.Table], pa.Table]:
    """Set one cell: of row `row`, or of the first event of kind `row`."""
    def change(table: pa.Table) -> pa.Table:
        values = table.column(column).to_pylist()
        values[row if isinstance(row, int) else table.column("kind").to_pylist().index(row)] = value
        index = table.schema.get_field_index(column)
        field = table.schema.field(index).with_nullable(True)  # as a foreign writer would declare it
        return table.set_column(index, field.with_type(dtype or field.type), pa.array(values, dtype or field.type))
    return change


def write_bytes(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).write_bytes(data((path / name).read_bytes()))
    return edit


def symlink(name: str, target: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        if (path / name).is_dir():
            shutil.rmtree(path / name)
        else:
            (path / name).unlink()
        os.symlink(target, path / name)
    return edit


def flip_kind_chunk(path: Path) -> None:
    """Invert the kind column's compressed pages, not the footer: the schema reads, the data
    does not. (Inverted ts_ns deltas can decode to other, still ordered, times: a segment
    has no page checksums to tell.)"""
    segment = path / SEGMENT
    chunk = pq.read_metadata(segment).row_group(0).column(EVENT_SCHEMA.get_field_index("kind"))
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    data = segment.read_bytes()
    segment.write_bytes(data[:start] + bytes(b ^ 0xFF for b in data[start:start + size]) + data[start + size:])


def two_segments_back_in_time(path: Path) -> None:
    """Split the events in two segments; the second starts before the first ends."""
    table = pq.read_table(path / SEGMENT)
    first, second = table.slice(0, 100), table.slice(100)
    ts = second.column("ts_ns").to_pylist()
    back = (ts[0] - first.column("ts_ns")[0].as_py()) // 2
    second = second.set_column(0, "ts_ns", pa.array([t - back for t in ts], pa.int64()))
    pq.write_table(first, path / SEGMENT)
    pq.write_table(second, path / "events/part-000001.parquet")


# name: (what is wrong, what the error line must say, how to do it to the tiny trace)
BAD: dict[str, tuple[str, tuple[str, ...], Callable[[Path], None]]] = {
    "manifest-not-json": ("manifest.json is not JSON", ("manifest.json: not valid JSON",),
                          write_bytes(MANIFEST, lambda data: b"{not json")),
    "manifest-a-list": ("manifest.json is a JSON list, not an object", ("manifest.json: not a chargeplay manifest",),
                        write_bytes(MANIFEST, lambda data: b"[1, 2]")),
    "manifest-schema-v2": ("manifest.json says trace schema version 2", ("manifest.json: trace schema version 2",),
                           edit_manifest(lambda m: m.update(schema_version=2))),
    "manifest-no-target": ("manifest.json has no target", ("manifest.json: no 'target'",), edit_manifest(lambda m: m.pop("target"))),
    "manifest-cpus-a-string": ("manifest.json kernel.cpus is a string", ("manifest.json: kernel.cpus", 'found "two"'),
                               edit_manifest(lambda m: m["kernel"].update(cpus="two"))),
    "manifest-negative-max": ("manifest.json target.max is negative", ("manifest.json: target.max", "found -4096"),
                              edit_manifest(lambda m: m["target"].update(max=-4096))),
    "manifest-huge-cpus": ("manifest.json kernel.cpus is 2^40: tables per CPU would not fit", ("manifest.json: kernel.cpus", "found 1099511627776"),
                           edit_manifest(lambda m: m["kernel"].update(cpus=1 << 40))),
    "manifest-unknown-status": ("manifest.json status is not one of recording, complete, interrupted", ("manifest.json: unknown status 'paused'",),
                                edit_manifest(lambda m: m.update(status="paused"))),
    "manifest-gfp-table-incomplete": ("manifest.json gfp_flags lacks __GFP_HIGH, which the charge path tests", ("manifest.json: no 'gfp_flags.__GFP_HIGH'",),
                                      edit_manifest(lambda m: m["gfp_flags"].pop("__GFP_HIGH"))),
    "manifest-lists-missing-segment": ("manifest.json lists events/part-000001.parquet, which is not there", ("events/part-000001.parquet: missing",),
                                       edit_manifest(lambda m: m["segments"].append(dict(m["segments"][0], file="events/part-000001.parquet")))),
    "manifest-segment-outside": ("manifest.json lists a segment outside the trace directory", ("tiny-trace/events/part-000000.parquet: leads outside",),
                                 edit_manifest(lambda m: m["segments"].append({"file": "../../tiny-trace/" + SEGMENT}))),
    "manifest-symlink-out": ("manifest.json is a symlink to /etc/passwd", ("manifest.json: leads outside", "/etc/passwd"),
                             symlink(MANIFEST, "/etc/passwd")),
    "segment-symlink-to-dev-zero": ("the segment is a symlink to /dev/zero (a reader following it would never finish)", ("part-000000.parquet: leads outside", "/dev/zero"),
                                    symlink(SEGMENT, "/dev/zero")),
    "events-dir-symlink-out": ("events/ is a symlink to another trace's events", ("events/part-000000.parquet: leads outside",),
                               symlink("events", "../../tiny-trace/events")),
    "slabs-symlink-out": ("slabs.parquet is a symlink out of the trace", ("slabs.parquet: leads outside",),
                          symlink("slabs.parquet", "../../tiny-trace/slabs.parquet")),
    "segment-truncated": ("the segment is cut after 1000 bytes", ("part-000000.parquet: unreadable Parquet",),
                          write_bytes(SEGMENT, lambda data: data[:1000])),
    "segment-bytes-flipped": ("the bytes of the segment's kind column are inverted", ("part-000000.parquet: unreadable Parquet",),
                              flip_kind_chunk),
    "segment-not-parquet": ("the segment is a text file", ("part-000000.parquet: unreadable Parquet",),
                            write_bytes(SEGMENT, lambda data: b"not parquet\n" * 100)),
    "column-missing": ("the segment has no gfp column", ("part-000000.parquet: no column 'gfp'",),
                       edit_table(SEGMENT, lambda t: t.drop_columns(["gfp"]))),
    "column-retyped": ("the segment's ts_ns column holds strings", ("part-000000.parquet: column 'ts_ns' is string, expected int64",),
                       edit_table(SEGMENT, lambda t: t.set_column(
        0, pa.field("ts_ns", pa.string()), t.column("ts_ns").cast(pa.string())))),
    "column-extra": ("the segment has an extra column, pool, which replay derives itself", ('part-000000.parquet: unexpected or repeated column "pool"',),
                     edit_table(SEGMENT, lambda t: t.append_column("pool", pa.array([1] * t.num_rows, pa.int8())))),
    "segment-untagged": ("the segment carries no schema version", ('part-000000.parquet: written with trace schema version "?"',),
                         edit_table(SEGMENT, lambda t: t.replace_schema_metadata({}))),
    "segment-schema-v2": ("the segment says schema version 2", ('part-000000.parquet: written with trace schema version "2"',),
                          edit_table(SEGMENT, lambda t: t.replace_schema_metadata({SCHEMA_VERSION_KEY: b"2"}))),
    "ts-out-of-order": ("event 50 is earlier than event 49", ("part-000000.parquet row 50: ts_ns 0 is earlier than the event before it",),
                        edit_table(SEGMENT, set_cell("ts_ns", 50, 0))),
    "ts-back-across-segments": ("the second segment starts a second before the first ends", ("part-000001.parquet row 0:", "is earlier than the event before it"),
                                two_segments_back_in_time),
    "ts-negative": ("the first event's ts_ns is negative", ("part-000000.parquet row 0: ts_ns -5",),
                    edit_table(SEGMENT, set_cell("ts_ns", 0, -5))),
    "kind-unknown": ("event 10 has kind kmalloc_huge", ('part-000000.parquet row 10: kind "kmalloc_huge" is not one of',),
                     edit_table(SEGMENT, set_cell("kind", 10, "kmalloc_huge"))),
    "kind-null": ("event 10 has no kind", ("part-000000.parquet row 10: kind null is not one of",),
                  edit_table(SEGMENT, set_cell("kind", 10, None))),
    "ctx-unknown": ("event 10 ran in context 'user'", ('part-000000.parquet row 10: ctx "user" is not one of',),
                    edit_table(SEGMENT, set_cell("ctx", 10, "user"))),
    "cpu-null": ("event 10 has no cpu", ("part-000000.parquet row 10: cpu null",), edit_table(SEGMENT, set_cell("cpu", 10, None))),
    "size-negative": ("a kmalloc allocates -64 bytes", ("bytes_alloc -64 is outside",),
                      edit_table(SEGMENT, set_cell("bytes_alloc", "kmalloc", -64))),
    "size-huge": ("a kmalloc allocates 2^40 bytes", ("bytes_alloc 1099511627776 is outside",),
                  edit_table(SEGMENT, set_cell("bytes_alloc", "kmalloc", 1 << 40))),
    "order-negative": ("a page allocation of order -1", ("order -1 is not a page order",),
                       edit_table(SEGMENT, set_cell("order", "page_alloc", -1))),
    "order-huge": ("a page allocation of order 60 (2^60 pages)", ("order 60 is not a page order",),
                   edit_table(SEGMENT, set_cell("order", "page_alloc", 60))),
    "obj-huge": ("an object pseudonym of 2^60: replay sizes a table by the largest", ("obj 1152921504606846976 is not a pseudonym",),
                 edit_table(SEGMENT, set_cell("obj", "kmem_cache_alloc", 1 << 60))),
    "obj-negative": ("an object pseudonym of -1, replay's 'no object'", ("obj -1 is not a pseudonym",),
                     edit_table(SEGMENT, set_cell("obj", "kmem_cache_alloc", -1))),
    "val-huge": ("a memcg counter changes by 2^50 pages", ("val 1125899906842624 is outside",),
                 edit_table(SEGMENT, set_cell("val", "memcg_lruvec_state", 1 << 50))),
    "slabs-duplicate-name": ("slabs.parquet describes one cache twice", ("slabs.parquet row", "names two caches"),
                             edit_table("slabs.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]))),
    "slabs-negative-order": ("a slab cache of order -3", ("slabs.parquet row 0: order -3 is not a page order",),
                             edit_table("slabs.parquet", set_cell("order", 0, -3))),
    "slabs-null-size": ("a slab cache without a slot size", ("slabs.parquet row 0: size null",),
                        edit_table("slabs.parquet", set_cell("size", 0, None))),
    "symbols-duplicate-id": ("symbols.parquet gives one call-site id two symbols", ("symbols.parquet row", "names two symbols"),
                             edit_table("symbols.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]))),
    "memcg-negative-usage": ("the first memcg sample's usage is negative", ("memcg.parquet row 0: usage -1048576 is outside",),
                             edit_table("memcg.parquet", set_cell("usage", 0, -(1 << 20)))),
    "memcg-usage-a-float": ("memcg.parquet's usage column holds doubles", ("memcg.parquet: column 'usage' is double, expected int64",),
                            edit_table("memcg.parquet", set_cell("usage", 0, 1.5, pa.float64()))),
}


SAYS = "the error says: "


def why_text(name: str) -> str:
    """why.txt: what is wrong, then one line for each phrase the error must say."""
    why, says, _ = BAD[name]
    return why + "\n" + "".join(f"{SAYS}{phrase}\n" for phrase in says)


def main() -> None:
    shutil.rmtree(TINY, ignore_errors=True)
    make_tiny(TINY)
    bad = CORPUS / "bad-traces"
    shutil.rmtree(bad, ignore_errors=True)
    for name, (_, _, damage) in BAD.items():
        shutil.copytree(TINY, bad / name)
        damage(bad / name)
        (bad / name / "why.txt").write_text(why_text(name))
    print(f"{TINY}: {EVENTS} events; {len(BAD)} bad traces in {bad}")


if __name__ == "__main__":
    main()
