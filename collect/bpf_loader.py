"""Loads collect/kmem.bpf.o, the capture program compiled once (`make bpf`), into the running
kernel with libbpf (collect/libbpf.py), and holds it attached until closed or until this
process dies (the kernel detaches what its file descriptors held: nothing is pinned or left
in tracefs).

What is decided here from the running kernel, before load: the slab tracepoints' arguments
(from BTF's btf_trace_* typedefs: the raw tracepoint programs read them by position), which
optional tracepoints exist (the memcg stat events, 6.14+), the maps' sizes, and where the
charge probes go (kprobes, where the kernel has them, on each function under the kernel's own
name). Struct layouts need no decision: libbpf relocates them (CO-RE).

Why libbpf and not bcc: bcc compiles the program at start, with LLVM, against kernel headers
that must match the running kernel's layout; on Debian's 6.1 and 6.12 it fails to compile
("Failed to compile BPF module"). A CO-RE object built once needs neither compiler nor headers
where it runs, only libbpf.so.1 and the kernel's BTF, and loads in a fraction of a second.
"""
from __future__ import annotations

import ctypes as ct
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

from collect.bpf_outputs import BpfMap
from collect.libbpf import BpfObject, LibbpfError, libbpf
from traces.errors import UserError
from traces.gfp import gfp_bit
from collect.kernel_tables import VMLINUX_BTF, read_btf, read_btf_enums, read_gfp_table
from collect.tracefs import tracefs_root
from traces.schema import CHARGE_FUNCTIONS

BPF_OBJECT = Path(__file__).with_name("kmem.bpf.o")
OBJECT_SLOTS_LOG2 = 20  # `objects`: 1 M slots, 8 MiB; 0.4% of allocations evicted a live object on the overhead benchmark
PROGRAM_PREFIX = "cp_"  # kmem.bpf.c's programs, as the kernel lists them

# The raw tracepoints kmem.bpf.c reads by position, with the argument types it expects
# (TP_PROTO, the same from 6.1 to 6.18).
RAW_TRACEPOINT_ARGS = {
    "kmalloc": ["long unsigned int", "const void *", "size_t", "size_t", "gfp_t", "int"],
    "kmem_cache_alloc": ["long unsigned int", "const void *", "struct kmem_cache *", "gfp_t", "int"],
    "kfree": ["long unsigned int", "const void *"],
    "kmem_cache_free": ["long unsigned int", "const void *", "const struct kmem_cache *"],
    "sched_process_fork": ["struct task_struct *", "struct task_struct *"],
    "sched_process_free": ["struct task_struct *"],
}
# Programs of tracepoints some kernels lack: loaded where BTF has btf_trace_EVENT.
OPTIONAL_TRACEPOINTS = {"cp_mod_memcg_state": "mod_memcg_state", "cp_mod_memcg_lruvec_state": "mod_memcg_lruvec_state",
                        "cp_count_memcg_events": "count_memcg_events"}
# Charge probes, by CHARGE_FUNCTIONS name: the names the function has in kernels (the first
# found in /proc/kallsyms is probed), and kmem.bpf.c's entry and return programs.
CHARGE_PROBES = {
    "try_charge_memcg": (("try_charge_memcg",), "cp_try_charge", "cp_try_charge_ret"),
    "__mem_cgroup_handle_over_high": (("__mem_cgroup_handle_over_high", "mem_cgroup_handle_over_high"), "cp_over_high", "cp_over_high_ret"),
    "mem_cgroup_out_of_memory": (("mem_cgroup_out_of_memory",), "cp_oom", "cp_oom_ret"),
}
assert tuple(CHARGE_PROBES) == CHARGE_FUNCTIONS
KPROBE_PROGRAMS = {program for _names, *programs in CHARGE_PROBES.values() for program in programs}
SLAB_ACCOUNT_BEFORE_6_9 = 0x04000000  # include/linux/slab.h, before the flags became enum _slab_flag_bits


class Unavailable(UserError):
    """The eBPF backend cannot run here; the message says what is missing."""


class Settings(ct.Structure):
    """kmem.bpf.c's `settings` (its read-only data)."""
    _fields_ = [("perf_output", ct.c_uint32), ("object_slots_log2", ct.c_uint32), ("gfp_account", ct.c_uint32),
                ("slab_account", ct.c_uint32), ("all_allocations", ct.c_uint32)]


def check_available() -> None:
    """Unavailable (saying what is missing) unless the object can be loaded here."""
    if os.geteuid() != 0:
        raise Unavailable("loading BPF programs needs root")
    if not BPF_OBJECT.exists():
        raise Unavailable(f"{BPF_OBJECT} is not built: run `make bpf` (needs clang and libbpf-dev where it is built)")
    if not VMLINUX_BTF.exists():
        raise Unavailable(f"{VMLINUX_BTF} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF")
    try:
        libbpf()
    except OSError as error:
        raise Unavailable(f"libbpf does not load ({error}): install Debian's libbpf1") from None


def _kernel_functions(names: set[str]) -> set[str]:
    """Which of these names /proc/kallsyms lists (functions not inlined away)."""
    with open("/proc/kallsyms") as kallsyms:
        return {symbol for line in kallsyms if (symbol := line.split()[2]) in names}


def _kprobes_problem() -> str | None:
    tracefs = next((p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")) if (p / "events").is_dir()), None)
    if tracefs is not None and not (tracefs / "kprobe_events").exists():
        return "kprobes are not built into this kernel (no kprobe_events in tracefs)"
    return None


@dataclass
class KernelFacts:
    slab_account: int  # the SLAB_ACCOUNT bit of struct kmem_cache's flags
    gfp_account: int  # __GFP_ACCOUNT
    absent: list[str]  # optional tracepoints this kernel lacks


def kernel_facts() -> KernelFacts:
    """What the running kernel's BTF says; Unavailable if its raw tracepoints are not the ones
    kmem.bpf.c reads."""
    try:
        btf = read_btf()
        for event, expected in RAW_TRACEPOINT_ARGS.items():
            if (found := btf.tracepoint_args(event)) != expected:
                raise Unavailable(f"tracepoint {event} passes ({', '.join(found)}), not ({', '.join(expected)}) as since Linux 6.1")
        absent = []
        for event in OPTIONAL_TRACEPOINTS.values():
            try:
                btf.tracepoint_args(event)
            except KeyError:
                absent.append(event)
    except (OSError, KeyError, ValueError) as error:
        raise Unavailable(f"cannot read the kernel's tracepoints from BTF: {error}") from None
    try:
        slab_account = 1 << read_btf_enums(["_slab_flag_bits"])["_slab_flag_bits"]["_SLAB_ACCOUNT"]
    except KeyError:
        slab_account = SLAB_ACCOUNT_BEFORE_6_9
    try:
        gfp_account = gfp_bit(read_gfp_table(tracefs_root()), "__GFP_ACCOUNT")
    except (OSError, KeyError, ValueError) as error:
        raise Unavailable(f"cannot read the kernel's gfp flags: {error}") from None
    return KernelFacts(slab_account, gfp_account, absent)


class Loader:
    """kmem.bpf.o loaded and attached, writing to `output` ("ringbuf": ring buffers of
    `pages` (records, named) pages; "perf": perf buffers the reader sizes); its maps by file
    descriptor, and what this kernel did not allow (notes, charge_problem)."""

    def __init__(self, output: str, pages: tuple[int, int], all_allocations: bool = False) -> None:
        check_available()
        started = time.perf_counter()
        facts = kernel_facts()
        self.facts_seconds = time.perf_counter() - started  # reading BTF in Python
        started = time.perf_counter()
        self.output, self.slab_account, self.absent = output, facts.slab_account, facts.absent
        self.settings = Settings(perf_output=output == "perf", object_slots_log2=OBJECT_SLOTS_LOG2,
                                 gfp_account=facts.gfp_account, slab_account=facts.slab_account,
                                 all_allocations=all_allocations)
        self.notes = ["the eBPF backend takes memcg stat events from their tracepoints only (Linux 6.14+); "
                      "--backend tracefs records them on this kernel through kprobes"] if facts.absent else []
        try:
            self.bpf = BpfObject(BPF_OBJECT)
        except LibbpfError as error:
            raise Unavailable(str(error)) from None
        try:
            self._load(output, pages)
            self.charge_functions: dict[str, str] = {}
            self.charge_problem = self._attach()
            self.load_seconds = time.perf_counter() - started  # libbpf: open, relocate, verify, attach
            suffix = "perf" if output == "perf" else "ring"
            self.output_fds = (self.bpf.map_fd(f"records_{suffix}"), self.bpf.map_fd(f"named_{suffix}"))
            self.tracked = BpfMap(self.bpf.map_fd("tracked"), ct.c_uint32, ct.c_uint8)
            self.config = BpfMap(self.bpf.map_fd("config"), ct.c_int32, ct.c_uint64)
            self.counters = BpfMap(self.bpf.map_fd("counters"), ct.c_int32, ct.c_uint64, per_cpu=True)
        except LibbpfError as error:
            self.bpf.close()
            raise Unavailable(f"the BPF program does not load: {error}") from None

    def _load(self, output: str, pages: tuple[int, int]) -> None:
        bpf = self.bpf
        ring_pages = pages if output == "ringbuf" else (1, 1)  # the output not used stays a page
        for name, n in zip(("records_ring", "named_ring"), ring_pages):
            bpf.set_max_entries(name, n * mmap.PAGESIZE)
        bpf.set_max_entries("tracked", int(Path("/proc/sys/kernel/pid_max").read_text()))
        bpf.set_max_entries("objects", 1 << OBJECT_SLOTS_LOG2)
        bpf.set_max_entries("evicted", 1 << (OBJECT_SLOTS_LOG2 - 1))  # a mark per pair of slots
        bpf.set_rodata(bytes(self.settings))
        for program, event in OPTIONAL_TRACEPOINTS.items():
            bpf.set_autoload(program, event not in self.absent)
        bpf.load()

    def _attach(self) -> str | None:
        """Attach the tracepoint programs, then the charge probes if the kernel allows (all of
        them or none); else why not."""
        skipped = {program for program, event in OPTIONAL_TRACEPOINTS.items() if event in self.absent}
        for program in self.bpf.program_names():
            if program not in KPROBE_PROGRAMS and program not in skipped:
                self.bpf.attach(program)
        if problem := _kprobes_problem():
            return problem
        present = _kernel_functions({name for names, *_ in CHARGE_PROBES.values() for name in names})
        attached = 0
        try:
            for function, (names, entry, exit_) in CHARGE_PROBES.items():
                kernel_name = next((name for name in names if name in present), names[0])
                for program, retprobe in ((entry, False), (exit_, True)):
                    self.bpf.attach_kprobe(program, kernel_name, retprobe)
                    attached += 1
                self.charge_functions[function] = kernel_name
        except LibbpfError as error:
            self.bpf.detach(attached)
            self.charge_functions = {}
            return f"{error.what} refused: {error.why}"
        return None

    def close(self) -> None:
        """Detach and unload (once; later calls do nothing)."""
        for name in ("tracked", "config", "counters"):
            if hasattr(self, name):
                getattr(self, name).close()
                delattr(self, name)
        for fd in getattr(self, "output_fds", ()):
            os.close(fd)
        self.output_fds = ()
        self.bpf.close()
