"""`chargeplay import`: the rules that turn perf script and trace-cmd report text into trace rows,
on excerpts of real output (perf 6.1 and trace-cmd 3.1.6 on Linux 6.18), each value worked out
by hand from the lines; and the refusals, one line each."""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from conftest import assert_user_error, chargeplay
from traces.gfp import decode_gfp
from traces.reader import Trace
from traces.tool_text import GfpNames, Line, Loss, field_texts, read_lines

# perf script --ns of `perf record -e ... -- python3 wl.py`: a rename at exec (perf-exec becomes
# python3), a stat event, allocations and their frees, a kfree(NULL), a syscall's return, an exec
# of bash and its fork. Times are ns past 43080.062939412, the first line's.
PERF_SCRIPT = """\
       perf-exec   483 [000] 43080.062939412:                     task:task_rename: pid=483 oldcomm=perf-exec newcomm=python3 oom_score_adj=0
         python3   483 [000] 43080.062960714:                memcg:mod_memcg_state: memcg_id=109463 item=55 val=1
         python3   483 [000] 43080.062961745:                   kmem:mm_page_alloc: page=0x1c2427 pfn=0x1c2427 order=0 migratetype=0 gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP
         python3   483 [000] 43080.062974114:                           kmem:kfree: call_site=perf_event_mmap+0x278 ptr=(nil)
         python3   483 [000] 43080.062978550:                kmem:kmem_cache_alloc: call_site=vm_area_alloc+0x1a ptr=0xffff88814e899b40 name=vm_area_struct bytes_req=192 bytes_alloc=192 gfp_flags=GFP_KERNEL node=-1 accounted=true
         python3   483 [000] 43080.062981475:                         kmem:kmalloc: call_site=perf_event_mmap+0x16b ptr=0xffff8882d4498000 bytes_req=4096 bytes_alloc=4096 gfp_flags=GFP_KERNEL node=-1 accounted=false
         python3   483 [000] 43080.062984189:                           kmem:kfree: call_site=perf_event_mmap+0x278 ptr=0xffff8882d4498000
         python3   483 [000] 43080.062991950:                 kmem:kmem_cache_free: call_site=vms_complete_munmap_vmas+0xe1 ptr=0xffff88814e899b40 name=vm_area_struct
         python3   483 [000] 43080.063102775:                raw_syscalls:sys_exit: NR 59 = 0
         python3   483 [000] 43080.063711590:                   kmem:mm_page_alloc: page=0x143728 pfn=0x143728 order=0 migratetype=0 gfp_flags=GFP_NOWAIT
         python3   483 [000] 43080.063714535:                    kmem:mm_page_free: page=0x143728 pfn=0x143728 order=0
            bash   483 [000] 43080.064760760:             sched:sched_process_exec: filename=/usr/bin/bash pid=483 old_pid=483
            bash   483 [000] 43080.071751605:                    task:task_newtask: pid=490 comm=bash clone_flags=1200000 oom_score_adj=0
"""

# trace-cmd report -t -l of a tracefs instance "cptest" (trace-cmd extract -B cptest): the
# latency columns after the CPU say the context, "s" a softirq.
TRACE_CMD_LATENCY = """\
cpus=2
cptest:  python3-2524    1..... 43132.236613890: sys_exit:             NR 1 = 2
cptest:  python3-2524    1..... 43132.236616283: kmem_cache_free:      (__fput+0x141) call_site=__fput+0x141 ptr=0xffff888104903870 name=lsm_file_cache
cptest:  python3-2524    1..s.. 43132.237580948: kfree:                (virtblk_request_done+0x85) call_site=virtblk_request_done+0x85 ptr=0xffff888101bb9c00
"""

# trace-cmd report -t -l of an instance whose 8 KiB buffers overflowed: the drops it reports
# (with a count, and without one where the kernel kept none), and a line after one that lost
# its instance prefix.
TRACE_CMD_DROPS = """\
cpus=2
cptest2: CPU:1 [9062 EVENTS DROPPED]
readlink-3553    1..... 43260.799448269: kmem_cache_alloc:     (mas_preallocate+0x442) call_site=mas_preallocate+0x442 ptr=0xffff88813cf2eb00 name=maple_node bytes_req=256 bytes_alloc=256 gfp_flags=GFP_KERNEL node=-1 accounted=false
cptest2:     bash-3549    1..... 43260.800257262: kmem_cache_alloc:     (security_file_alloc+0x27) call_site=security_file_alloc+0x27 ptr=0xffff8881c99efb40 name=lsm_file_cache bytes_req=24 bytes_alloc=24 gfp_flags=GFP_KERNEL|__GFP_ZERO node=-1 accounted=false
cptest2:     bash-3549    1dN.2. 43260.800400725: kmem_cache_alloc:     (__send_signal_locked+0x98) call_site=__send_signal_locked+0x98 ptr=0xffff8882a9407320 name=sigqueue bytes_req=80 bytes_alloc=80 gfp_flags=GFP_ATOMIC node=-1 accounted=true
cptest2: CPU:0 [EVENTS DROPPED]
 python3-3513    0..... 43260.843439455: kmem_cache_alloc:     (security_file_alloc+0x27) call_site=security_file_alloc+0x27 ptr=0xffff8881228ffea0 name=lsm_file_cache bytes_req=24 bytes_alloc=24 gfp_flags=GFP_KERNEL|__GFP_ZERO node=-1 accounted=false
"""


def imported(tmp_path: Path, text: str, tool: str, *options: str) -> Trace:
    tmp_path.mkdir(exist_ok=True)
    source = tmp_path / "text"
    source.write_text(text)
    result = chargeplay("import", "--from", tool, str(source), "-o", str(tmp_path / "trace"), *options)
    assert result.returncode == 0, result.stderr
    return Trace.open(tmp_path / "trace")


def with_symbols(trace: Trace) -> pl.DataFrame:
    symbols = trace.side_table("symbols").rename({"id": "call_site"})
    return trace.events().join(symbols, on="call_site", how="left", maintain_order="left").collect()


def test_perf_script_records_become_the_rows_a_capture_makes(tracefs, tmp_path):
    trace = imported(tmp_path, PERF_SCRIPT, "perf-script", "--memory-max", "64M")
    rows = with_symbols(trace)
    table = trace.gfp_flags
    assert rows["kind"].to_list() == [  # the rename names a task, no row; kfree(NULL) frees nothing
        "memcg_state", "page_alloc", "kmem_cache_alloc", "kmalloc", "kfree", "kmem_cache_free", "user_return", "page_alloc",
        "page_free", "task_exec", "task_new"]
    assert rows["ts_ns"].to_list() == [21302, 22333, 39138, 42063, 44777, 52538, 163363, 772178, 775123, 1821348, 8812193]
    assert set(rows["pid"]) == {483} and set(rows["cpu"]) == {0} and rows["ctx"].null_count() == rows.height  # perf shows none
    assert rows["comm"].to_list() == ["python3"] * 9 + ["bash"] * 2  # renamed at the start, bash from its exec on
    # Objects and pages: pseudonyms in allocation order, shared with their frees.
    assert rows["obj"].to_list() == [None, 0, 1, 2, 2, 1, None, 3, 3, None, None]
    alloc = rows.row(2, named=True)
    assert (alloc["cache"], alloc["bytes_req"], alloc["bytes_alloc"], alloc["node"], alloc["symbol"]) == (
        "vm_area_struct", 192, 192, -1, "vm_area_alloc+0x1a")
    assert alloc["gfp"] == table["GFP_KERNEL"] and alloc["accounted"] and not alloc["failed"]
    kmalloc, kfree = rows.row(3, named=True), rows.row(4, named=True)
    assert (kmalloc["bytes_alloc"], kmalloc["accounted"], kmalloc["symbol"], kfree["symbol"]) == (
        4096, False, "perf_event_mmap+0x16b", "perf_event_mmap+0x278")
    page = rows.row(1, named=True)
    assert page["gfp"] == table["GFP_KERNEL_ACCOUNT"] | table["__GFP_ZERO"] | table["__GFP_COMP"]
    assert (page["order"], page["bytes_alloc"], page["accounted"]) == (0, trace.page_size, True)
    assert (rows["accounted"][7], rows["gfp"][7]) == (False, table["GFP_NOWAIT"])
    assert (rows["memcg_id"][0], rows["item"][0], rows["val"][0]) == (109463, 55, 1)
    assert rows["item"][6] == 59  # execve's return
    assert (rows["val"][10], rows["item"][10]) == (490, 0)  # a fork: clone_flags 0x1200000 has no CLONE_VM, CLONE_THREAD
    manifest = trace.manifest
    assert manifest["target"]["memcg_id"] == 109463 and manifest["target"]["max"] == 64 << 20
    assert manifest["start"]["trace_ns"] == 43080062939412 and manifest["end"]["trace_ns"] == 43080071751605
    assert manifest["kinds"]["memcg_event"] == {"tracepoint": "memcg:count_memcg_events", "unavailable": "not in the perf script text"}
    assert manifest["lost"]["total"] == 0 and manifest["kernel"]["release"] is None and manifest["kernel"]["cpu_nodes"] is None
    assert manifest["kernel"]["hz"] is None  # the text does not say
    described = chargeplay("info", str(trace.path))  # says what the tool did not record, not "None"
    assert described.returncode == 0 and "kernel -," in described.stdout and "cgroup version not recorded" in described.stdout
    assert "None" not in described.stdout


def test_a_page_allocation_that_failed(tracefs, tmp_path):
    # mm_page_alloc's print fmt shows a failed allocation's pfn, -1, as 0 (and its page as NULL)
    text = PERF_SCRIPT.replace("page=0x1c2427 pfn=0x1c2427 order=0 migratetype=0", "page=(nil) pfn=0x0 order=0 migratetype=0")
    page = imported(tmp_path, text, "perf-script").events().collect().row(1, named=True)
    assert (page["kind"], page["failed"], page["obj"], page["accounted"]) == ("page_alloc", True, None, True)


def test_no_raw_address_is_stored(tracefs, tmp_path):
    imported(tmp_path, PERF_SCRIPT.replace("call_site=vm_area_alloc+0x1a", "call_site=0xffffffff8162e011"), "perf-script")
    stored = b"".join(path.read_bytes() for path in (tmp_path / "trace").rglob("*") if path.is_file())
    for address in ("ffff88814e899b40", "ffff8882d4498000", "1c2427", "143728", "ffffffff8162e011"):
        assert address.encode() not in stored and str(int(address, 16)).encode() not in stored
    symbols = pl.read_parquet(tmp_path / "trace" / "symbols.parquet")["symbol"].to_list()
    assert "?" in symbols and "perf_event_mmap+0x278" in symbols  # the one printed as an address is unnamed


def test_trace_cmd_latency_columns_give_the_context(tracefs, tmp_path):
    rows = with_symbols(imported(tmp_path, TRACE_CMD_LATENCY, "trace-cmd"))
    assert rows["kind"].to_list() == ["user_return", "kmem_cache_free", "kfree"]
    assert rows["ctx"].to_list() == ["task", "task", "softirq"]
    assert rows["ts_ns"].to_list() == [0, 2393, 967058] and set(rows["cpu"]) == {1} and set(rows["pid"]) == {2524}
    # Frees of objects allocated before the text begins: kept (the task is the workload's), without a pseudonym.
    assert rows["obj"].to_list() == [None, None, None] and rows["cache"][1] == "lsm_file_cache"
    assert rows["symbol"].to_list() == [None, "__fput+0x141", "virtblk_request_done+0x85"]


def test_trace_cmd_drops_are_the_traces_lost_events(tracefs, tmp_path):
    trace = imported(tmp_path, TRACE_CMD_DROPS, "trace-cmd")
    lost = trace.manifest["lost"]
    assert lost["total"] == 9063 and lost["per_cpu"] == {"0": 1, "1": 9062}  # a drop without a count counts one
    # Between the records either side: none before the first; 800400725 - 799448269 to 843439455 - 799448269.
    assert lost["spans"] == [{"from_ns": 0, "to_ns": 0, "events": 9062}, {"from_ns": 952456, "to_ns": 43991186, "events": 1}]
    rows = trace.events().collect()
    assert rows["comm"].to_list() == ["readlink", "bash", "bash", "python3"] and rows["ctx"].to_list() == ["task"] * 4
    assert rows["accounted"].to_list() == [False, False, True, False]


def test_a_flag_name_this_kernels_table_lacks_gets_a_bit_of_its_own(tracefs, tmp_path):
    text = PERF_SCRIPT.replace("gfp_flags=GFP_NOWAIT", "gfp_flags=GFP_NOWAIT|__GFP_FROM_ANOTHER_KERNEL")
    trace = imported(tmp_path, text, "perf-script")
    table = trace.gfp_flags
    bit = table["__GFP_FROM_ANOTHER_KERNEL"]
    assert bin(bit).count("1") == 1 and all(not mask & bit for name, mask in table.items() if name != "__GFP_FROM_ANOTHER_KERNEL")
    assert decode_gfp(trace.events().collect()["gfp"][7], table) == "GFP_NOWAIT|__GFP_FROM_ANOTHER_KERNEL"


def test_stat_events_of_other_memcgs_are_left_out(tracefs, tmp_path):
    other = "         python3   483 [000] 43080.062960800:                memcg:mod_memcg_state: memcg_id=1 item=55 val=-1\n"
    text = PERF_SCRIPT.replace("val=1\n", "val=1\n" + other)
    assert imported(tmp_path / "default", text, "perf-script").events().collect()["memcg_id"].drop_nulls().to_list() == [109463]
    chosen = imported(tmp_path / "chosen", text, "perf-script", "--memcg-id", "1")
    assert chosen.events().collect()["memcg_id"].drop_nulls().to_list() == [1] and chosen.manifest["target"]["memcg_id"] == 1


def lines_of(tmp_path: Path, text: str, tool: str) -> list[Line | Loss]:
    source = tmp_path / "text"
    source.write_text(text)
    return list(read_lines(source, tool, [("kmem", "kmalloc"), ("raw_syscalls", "sys_exit"), ("task", "task_newtask"),
                                          ("sched", "sched_process_exec")]))


def test_perf_script_lines_as_its_options_print_them(tmp_path):
    # -F comm,pid,tid,... (pid/tid), a task name with a space, a call chain (-g), an event not imported
    text = """\
       my worker  8073/8073  [000] 43682.776217438:    raw_syscalls:sys_exit: NR 124 = 31209
       my worker  8073/8073  [000] 43682.776907885:        task:task_newtask: pid=8123 comm=my worker clone_flags=1200000 oom_score_adj=0
            true  8123/8123  [000] 43682.778317841: sched:sched_process_exec: filename=/tmp/imp/a dir/true pid=8123 old_pid=8123
           sleep  7930 [001] 43665.898148848: sched:sched_switch: prev_comm=sleep prev_pid=7930 prev_prio=120 prev_state=S ==> next_comm=python next_pid=7654 next_prio=120
            true  7889 [001] 43682.782834: kmem:kmalloc: call_site=perf_event_mmap+0x16b ptr=0xffff8882f16ff000 bytes_req=4096 bytes_alloc=4096 gfp_flags=GFP_KERNEL node=-1 accounted=false
\tffffffff8165391f __kmalloc_cache_noprof+0x23f ([kernel.kallsyms])
\tffffffff8159576b perf_event_mmap+0x16b ([kernel.kallsyms])
"""
    lines = lines_of(tmp_path, text, "perf-script")
    assert [(line.number, line.comm, line.pid, line.cpu, line.ts_ns) for line in lines] == [
        (1, "my worker", 8073, 0, 43682776217438), (2, "my worker", 8073, 0, 43682776907885),
        (3, "true", 8123, 0, 43682778317841), (5, "true", 7889, 1, 43682782834000)]  # µs: three zeros
    assert field_texts(lines[0].fields) == {"id": "124", "ret": "31209"}
    assert field_texts(lines[1].fields) == {"pid": "8123", "comm": "my worker", "clone_flags": "1200000", "oom_score_adj": "0"}
    assert field_texts(lines[2].fields)["filename"] == "/tmp/imp/a dir/true"


def test_trace_cmd_lines_with_and_without_latency_columns(tmp_path):
    text = """\
cpus=2
cptest:          python3-2524  [001] 43132.236614: sys_exit:             NR 1 = 2
cptest:  python3-2524    1..s1. 43132.236616283: sys_exit:             NR 33 = 1
cptest2: CPU:1 [9062 EVENTS DROPPED]
 python3-3513    0..... 43260.843439455: sys_exit:             NR 3 = 0
"""
    lines = lines_of(tmp_path, text, "trace-cmd")
    assert [(line.cpu, line.context, line.ts_ns) for line in lines if isinstance(line, Line)] == [
        (1, None, 43132236614000), (1, "s", 43132236616283), (0, ".", 43260843439455)]
    assert lines[2] == Loss(4, 1, 9062)


def test_gfp_names_with_a_table():
    names = GfpNames({"GFP_KERNEL_ACCOUNT": 0x400CC0, "GFP_KERNEL": 0xCC0, "__GFP_ZERO": 0x100, "__GFP_ACCOUNT": 0x400000})
    assert names.bits("GFP_KERNEL|__GFP_ACCOUNT") == names.bits("GFP_KERNEL_ACCOUNT") == 0x400CC0
    assert names.bits("GFP_KERNEL|__GFP_ZERO|0x8") == 0xDC8  # bits no name covers, printed in hex
    assert names.bits("none") == 0  # kmalloc's word for no flags
    assert names.bits("__GFP_NEW") == 1 << 31 and names.table["__GFP_NEW"] == 1 << 31  # the highest bit the table leaves free


def write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_refusals_are_one_line_and_leave_no_trace(tracefs, tmp_path):
    out = tmp_path / "trace"
    perf_text = write(tmp_path, "perf.txt", PERF_SCRIPT)
    cases = [
        (["--from", "ftrace", str(perf_text)], ["--from ftrace", "perf-script, trace-cmd"]),
        (["--from", "perf-script", str(tmp_path / "missing.txt")], ["missing.txt", "no such file"]),
        (["--from", "perf-script", str(perf_text), "--memcg-id", "-1"], ["--memcg-id -1", "inode number"]),
        (["--from", "perf-script", str(write(tmp_path, "binary", bytes(range(256)) * 4))], ["binary line", "not text"]),
        (["--from", "perf-script", str(write(tmp_path, "prose.txt", "Hello.\nThis is no trace.\n"))],
         ["prose.txt", "not perf script text"]),
        (["--from", "trace-cmd", str(perf_text)], ["perf script text", "--from perf-script"]),
        (["--from", "trace-cmd", str(write(tmp_path, "perf.data", b"PERFILE2" + bytes(64)))], ["perf.data file", "--from perf-script"]),
        (["--from", "perf-script", str(write(tmp_path, "switch.txt", "           sleep  7930 [001] 43665.898148848: sched:sched_switch: "
                                           "prev_comm=sleep prev_pid=7930 prev_prio=120 prev_state=S ==> next_comm=python\n"))],
         ["no records of the events chargeplay imports", "kmem:kmalloc"]),
        (["--from", "perf-script", str(write(tmp_path, "unsorted.txt", "".join(reversed(PERF_SCRIPT.splitlines(keepends=True)))))],
         ["line 2", "not in time order"]),
        (["--from", "perf-script", str(write(tmp_path, "bad.txt", PERF_SCRIPT.replace("bytes_req=192", "bytes_req=lots")))],
         ["bad.txt line 5", "bytes_req=lots"]),
    ]
    for args, words in cases:
        assert_user_error(chargeplay("import", *args, "-o", str(out)), *words)
        assert not out.exists(), args


def test_a_binary_file_whose_tool_is_missing(tracefs, tmp_path):
    data = write(tmp_path, "trace.dat", b"\x17\x08Dtracing6\x00" + bytes(64))
    result = chargeplay("import", "--from", "trace-cmd", str(data), "-o", str(tmp_path / "trace"), env={**os.environ, "PATH": "/nonexistent"})
    assert_user_error(result, "trace.dat", "needs trace-cmd", "Debian package trace-cmd")
