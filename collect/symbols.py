"""Call sites: raw return addresses become dense ids; ids resolve to symbol+offset.

Raw kernel text addresses reveal the KASLR offset, so they stay in the collector's
memory. At the end of a capture each address is resolved against /proc/kallsyms
the way the kernel's %pS does ("d_alloc+0x2c/0x90 [module]") and only that is stored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from traces.schema import SYMBOL_COLUMNS, table_schema

TEXT_TYPES = frozenset("tTwW")


class CallSites:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}

    def ids_for(self, addresses: np.ndarray) -> np.ndarray:
        """Dense int32 ids for an array of addresses; the few distinct ones go through a dict."""
        unique, inverse = np.unique(addresses, return_inverse=True)
        mapped = np.fromiter(
            (self.ids.setdefault(int(a), len(self.ids)) for a in unique), dtype=np.int32, count=unique.size
        )
        return mapped[inverse]

    def symbol_table(self, kallsyms: Path = Path("/proc/kallsyms")) -> pa.Table:
        resolve = Kallsyms(kallsyms).resolve
        ids = sorted(self.ids.items(), key=lambda item: item[1])
        return pa.table(
            {"id": [i for _, i in ids], "symbol": [resolve(address) for address, _ in ids]},
            schema=table_schema(SYMBOL_COLUMNS),
        )


class Kallsyms:
    """Text symbols of the running kernel and its modules, sorted by address."""

    def __init__(self, path: Path) -> None:
        entries: list[tuple[int, str, str]] = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in TEXT_TYPES:
                module = parts[3].strip("[]") if len(parts) > 3 else ""
                entries.append((int(parts[0], 16), parts[2], module))
        entries.sort()
        self.addresses = np.array([e[0] for e in entries], dtype=np.uint64)
        self.entries = entries

    def resolve(self, address: int) -> str:
        """function+0xoffset/0xsize [module], or "?" when no symbol covers the address
        (also when kptr_restrict hides addresses: then kallsyms lists all as zero)."""
        i = int(np.searchsorted(self.addresses, np.uint64(address), side="right")) - 1
        if i < 0 or self.addresses[i] == 0:
            return "?"
        start, name, module = self.entries[i]
        # The next symbol's start bounds this one, as kallsyms_lookup_size_offset does.
        size = int(self.addresses[i + 1]) - start if i + 1 < len(self.entries) else 0
        text = f"{name}+{address - start:#x}/{size:#x}"
        return f"{text} [{module}]" if module else text
