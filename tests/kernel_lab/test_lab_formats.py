"""The lab kernels' own tracepoint formats (tests/data/kernels, dumped by `python -m lab facts`)
read with chargeplay's parsers, without booting: what differs between 6.1, 6.12 and 6.18 is
stated here, from the files."""
from __future__ import annotations

from pathlib import Path

import pytest

from collect.event_format import read_event_format
from collect.kernel_tables import read_gfp_table

KERNELS = sorted((Path(__file__).resolve().parents[1] / "data" / "kernels").iterdir())
LTS = [k for k in KERNELS if k.name.startswith(("6.1.", "6.1-", "6.12."))]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_every_format_file_parses(kernel):
    files = list((kernel / "events").glob("*/*/format"))
    assert len(files) > 50
    for path in files:
        event = read_event_format(kernel / "events", path.parent.parent.name, path.parent.name)
        assert event.name == path.parent.name and event.fields


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_the_gfp_table_has_the_accounting_flag(kernel):
    table = read_gfp_table(kernel)
    assert table["GFP_KERNEL_ACCOUNT"] == table["GFP_KERNEL"] | table["__GFP_ACCOUNT"]


def test_the_lts_kernels_differ_from_6_18_where_the_collector_must_adapt():
    """6.1 and 6.12 have no cache name on kmem_cache_alloc and no memcg tracepoints; 6.1 still
    has __GFP_ATOMIC. (A collector that assumes 6.18's fields dies on them.)"""
    assert len(LTS) == 2
    for kernel in LTS:
        alloc = read_event_format(kernel / "events", "kmem", "kmem_cache_alloc")
        assert "name" not in alloc.fields and "accounted" in alloc.fields
        assert not (kernel / "events" / "memcg").exists()
    assert "__GFP_ATOMIC" in read_gfp_table(next(k for k in LTS if k.name.startswith("6.1.")))
    assert "__GFP_ATOMIC" not in read_gfp_table(next(k for k in LTS if k.name.startswith("6.12.")))


@pytest.mark.parametrize("kernel", LTS, ids=lambda k: k.name)
def test_the_kprobe_events_made_there_have_the_memcg_tracepoints_fields(kernel):
    """The kprobes that stand in for the memcg tracepoints (collect.memcg_probes) name their
    fetch args as the tracepoints' fields, after the __probe_ip every kprobe record starts with."""
    for function in ("__mod_memcg_lruvec_state", "__mod_memcg_state", "__count_memcg_events"):
        event = read_event_format(kernel / "events", "kprobes", function)
        assert list(event.fields)[4:] == ["__probe_ip", "id", "item", "val"]
        assert (event.fields["id"].size, event.fields["item"].size, event.fields["item"].signed) == (8, 4, True)
