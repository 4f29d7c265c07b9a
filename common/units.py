"""Sizes as people write them: 64M, 1.5G, 4096 (bytes), with binary multiples like cgroups; and
ranges of figures."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_MULTIPLIER = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in `text` ("64M", "512k", "2G", "4096"); ValueError naming the problem otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size {text!r} is not understood; write a number with an optional K, M, G, T or P, like 64M")
    return int(float(match.group(1)) * _MULTIPLIER[match.group(2).lower()])


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while abs(value) >= 1024 and step < len(units) - 1:
        value /= 1024
        step += 1
    return f"{value:.0f} B" if step == 0 else f"{value:.1f} {units[step]}"


def format_span(values: list[float], form: str) -> str:
    """The lowest to the highest of `values` in `form` (e.g. "{:.3f}"), one figure where they print alike."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low} to {high}"
