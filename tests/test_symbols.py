"""Call-site addresses resolved against a kallsyms file the way the kernel's %pS prints them."""
from __future__ import annotations

from pathlib import Path

from collect.symbols import resolve

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 T kmalloc_trace
ffffffff81000180 d some_data
ffffffff81000200 t __kmalloc_cache_noprof
ffffffffc0001000 t ext4_alloc_inode\t[ext4]
ffffffffc0001040 T ext4_iget\t[ext4]
"""


def test_an_address_is_its_symbol_plus_offset_over_the_size_to_the_next_text_symbol(tmp_path: Path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(KALLSYMS)
    assert resolve([0xFFFFFFFF81000104, 0xFFFFFFFF81000190, 0xFFFFFFFFC0001010, 0xFFFFFFFFC0001044], kallsyms) == [
        "kmalloc_trace+0x4/0x100",  # the data symbol between is no bound: the next text symbol is
        "kmalloc_trace+0x90/0x100",
        "ext4_alloc_inode+0x10/0x40 [ext4]",
        "ext4_iget+0x4/0x0 [ext4]",  # the last symbol: no next one gives its size
    ]


def test_aliases_resolve_to_the_first_listed_and_uncovered_addresses_to_a_question_mark(tmp_path: Path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(KALLSYMS)
    assert resolve([0xFFFFFFFF81000008, 0xFFFFFFFF80000000], kallsyms) == ["_stext+0x8/0x100", "?"]
    hidden = tmp_path / "hidden"  # kptr_restrict: every address reads as zero
    hidden.write_text("".join("0" * 16 + line[16:] + "\n" for line in KALLSYMS.splitlines()))
    assert resolve([0xFFFFFFFF81000104], hidden) == ["?"]
