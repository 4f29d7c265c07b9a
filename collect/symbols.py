"""Call sites: raw return addresses become dense ids; ids resolve to symbol+offset.

Raw kernel text addresses reveal the KASLR offset, so they stay in the collector's
memory. At the end of a capture each address is resolved against /proc/kallsyms
the way the kernel's %pS does ("d_alloc+0x2c/0x90 [module]") and only that is stored.
"""
from __future__ import annotations

from array import array
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
        ids = sorted(self.ids.items(), key=lambda item: item[1])
        return pa.table(
            {"id": [i for _, i in ids], "symbol": resolve([address for address, _ in ids], kallsyms)},
            schema=table_schema(SYMBOL_COLUMNS),
        )


def resolve(addresses: list[int], kallsyms: Path) -> list[str]:
    """Each address as function+0xoffset/0xsize [module], or "?" when no text symbol covers it
    (also when kptr_restrict hides addresses: then kallsyms lists all as zero).

    kallsyms lists about 120,000 symbols and a capture resolves a few hundred, so the file is
    read twice rather than held: once for the symbols' addresses, once for the names wanted.
    """
    starts, line_numbers = _text_symbol_starts(kallsyms)
    # By address; of aliases (equal addresses) the first listed comes last, and is the one found,
    # as the kernel's own lookup (get_symbol_pos) picks it.
    order = np.lexsort((-line_numbers, starts))
    starts, line_numbers = starts[order], line_numbers[order]
    found = np.searchsorted(starts, np.array(addresses, np.uint64), side="right") - 1
    names = _names_on(kallsyms, {int(line_numbers[i]) for i in found if i >= 0})
    resolved = []
    for address, i in zip(addresses, found.tolist()):
        if i < 0 or starts[i] == 0:
            resolved.append("?")
            continue
        name, module = names[int(line_numbers[i])]
        # The next symbol's start bounds this one, as kallsyms_lookup_size_offset does.
        size = int(starts[i + 1]) - int(starts[i]) if i + 1 < len(starts) else 0
        text = f"{name}+{address - int(starts[i]):#x}/{size:#x}"
        resolved.append(f"{text} [{module}]" if module else text)
    return resolved


def _text_symbol_starts(kallsyms: Path) -> tuple[np.ndarray, np.ndarray]:
    """The addresses of the text symbols, and the lines that list them."""
    starts, line_numbers = array("Q"), array("q")
    with open(kallsyms) as lines:
        for number, line in enumerate(lines):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in TEXT_TYPES:
                starts.append(int(parts[0], 16))
                line_numbers.append(number)
    return np.array(starts, np.uint64), np.array(line_numbers, np.int64)


def _names_on(kallsyms: Path, wanted: set[int]) -> dict[int, tuple[str, str]]:
    """Symbol name and module ("" for the kernel's own) of the wanted lines."""
    names = {}
    with open(kallsyms) as lines:
        for number, line in enumerate(lines):
            if number in wanted:
                parts = line.split()
                names[number] = (parts[2], parts[3].strip("[]") if len(parts) > 3 else "")
    return names
