"""A capture from start to finish: the options checked, then the backend asked for run
(collect.tracefs_collector's or collect.ebpf's, both built on collect.collector's core)."""
from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa

from collect.collector import CaptureError, CaptureOptions, Progress
from collect.tracefs_collector import TracefsCollector
from traces.manifest import Manifest

BACKENDS = ("tracefs", "ebpf", "auto")
BPF_OUTPUTS = ("auto", "ringbuf", "perf")


def capture(options: CaptureOptions, report: Callable[[Progress], None], say: Callable[[str], None]) -> Manifest:
    if os.geteuid() != 0:
        raise CaptureError("live capture needs root (tracefs and cgroups); run it with sudo")
    if options.backend not in BACKENDS:
        raise CaptureError(f"--backend {options.backend}: choose one of {', '.join(BACKENDS)}")
    if options.bpf_output not in BPF_OUTPUTS:
        raise CaptureError(f"--bpf-output {options.bpf_output}: choose one of {', '.join(BPF_OUTPUTS)}")
    # Arrow's buffers from the C library's malloc, which gives freed memory back: mimalloc, the
    # default, keeps what a storm's drains used (its peak RSS about 20 MiB higher, measured)
    pa.set_memory_pool(pa.system_memory_pool())
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
