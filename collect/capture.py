"""A capture from start to finish: the options checked, then the backend asked for run
(collect.tracefs_collector's or collect.ebpf's, both built on collect.collector's core)."""
from __future__ import annotations

import ctypes
import os
from typing import Callable

from collect.collector import CaptureError, CaptureOptions, Progress
from collect.tracefs_collector import TracefsCollector
from traces.manifest import Manifest

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD = 8 << 20  # below the drain buffer's 12 MiB; at 1 MiB, mapping more often cost storms 6% of their rate
BACKENDS = ("tracefs", "ebpf", "auto")
BPF_OUTPUTS = ("auto", "ringbuf", "perf")


def _fix_the_mmap_threshold() -> None:
    """glibc raises its mmap threshold to the size of each large block freed, up to 32 MiB: blocks
    below it then come from the heap, where what a burst of events left behind stays in RSS (an
    idle capture grew in steps with each burst of other tasks' interrupt-context events, 15 MiB
    after three storms). A fixed threshold keeps large buffers in mappings of their own, which
    free gives back."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; another C library keeps its way
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def capture(options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None]) -> Manifest:
    if os.geteuid() != 0:
        raise CaptureError("live capture needs root (tracefs and cgroups); run it with sudo")
    if options.backend not in BACKENDS:
        raise CaptureError(f"--backend {options.backend}: choose one of {', '.join(BACKENDS)}")
    if options.bpf_output not in BPF_OUTPUTS:
        raise CaptureError(f"--bpf-output {options.bpf_output}: choose one of {', '.join(BPF_OUTPUTS)}")
    if options.collector_cpus and not options.collector_cpus <= (ours := os.sched_getaffinity(0)):
        raise CaptureError(f"--collector-cpus: CPU {min(options.collector_cpus - ours)} is not one this process may run on "
                           f"({', '.join(map(str, sorted(ours)))}); give some of those")
    _fix_the_mmap_threshold()
    if options.backend != "tracefs":
        from collect import ebpf  # libbpf and its record layouts: not on the tracefs backend's way to its workload

        try:
            loader = ebpf.Loader(options)  # loads and attaches kmem.bpf.o, in this process
        except ebpf.Unavailable as why:
            if options.backend == "ebpf":
                raise CaptureError(f"eBPF backend unavailable: {why}") from None
            say(f"backend: tracefs (eBPF unavailable: {why})")
        else:
            if options.backend == "auto":
                say("backend: ebpf (the BPF object loaded and attached)")
            try:
                return ebpf.EbpfCollector(options, report, say, loader).run()
            finally:
                loader.close()
    return TracefsCollector(options, report, say).run()
