"""A zoo of small workloads, each charging a different kind of memory to its memory cgroup.

    python3 -m zoo --list
    python3 -m zoo NAME [--scale N]

Each workload is a function whose docstring says, from the kernel's point of view, what it
charges to the memcg (slab caches, page kinds) and what reclaim can take back. They were written
to judge how well a model of memcg charging does on workloads nobody tuned it for: nothing in
them is tuned to any figure. Standard library only (the system python3 of a lab guest runs
them); every workload removes what it creates and reaps its children.
"""
from __future__ import annotations

# Importing a module registers its workloads; --list shows them in this order.
from . import files, pagecache, buffers, objects, tasks, memory, mix  # noqa: F401,I001
from .support import WORKLOADS, Workload

__all__ = ["WORKLOADS", "Workload"]
