"""The real sample traces bundled with chargeplay (traces/samples/NAME)."""
from __future__ import annotations

from pathlib import Path

from traces.errors import UserError

SAMPLES_DIR = Path(__file__).parent / "samples"
DEFAULT_SAMPLE = "file-storm"


def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if (p / "manifest.json").exists())


def sample_path(name: str) -> Path:
    path = SAMPLES_DIR / name
    if not (path / "manifest.json").exists():
        raise UserError(f"no bundled sample {name!r}; the samples are: {', '.join(sample_names()) or 'none'}")
    return path
