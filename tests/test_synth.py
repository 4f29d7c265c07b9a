"""`chargeplay synth`: whole copies of a real trace laid end to end, each shifted in time by the
trace's span plus 1 ms and in pseudonyms by its largest plus one, through the real command line."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from conftest import chargeplay
from traces.reader import Trace

TINY = Path(__file__).parent / "corpus" / "tiny-trace"


def test_synth_lays_whole_shifted_copies_end_to_end(tmp_path):
    tile = Trace.open(TINY).events().collect()  # 200 events
    done = chargeplay("synth", "--like", str(TINY), "--events", "450", "-o", str(tmp_path / "big"))
    assert done.returncode == 0, done.stderr
    big = Trace.open(tmp_path / "big").events().collect()  # reopening checks it: time order, pseudonym range
    assert big.height == 600  # whole copies until at least 450: three
    span, obj_step = tile["ts_ns"].max() + 1_000_000, tile["obj"].max() + 1
    for copy in range(3):
        part = big.slice(copy * 200, 200)
        assert part["ts_ns"].to_list() == (tile["ts_ns"] + copy * span).to_list()
        assert part["obj"].to_list() == (tile["obj"] + copy * obj_step).to_list()
        assert part.drop("ts_ns", "obj").equals(tile.drop("ts_ns", "obj"))
    # an allocation and its free still pair within their own copy: as many frees match as in the tile
    def paired(events: pl.DataFrame) -> int:
        allocs = events.filter(pl.col("kind").is_in(["kmalloc", "kmem_cache_alloc", "page_alloc"])).select("obj")
        frees = events.filter(pl.col("kind").is_in(["kfree", "kmem_cache_free", "page_free"])).select("obj")
        return frees.join(allocs, on="obj").height
    assert paired(big) == 3 * paired(tile)
