"""The kernel matrix: which Debian kernels the lab boots, and where their images are."""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# series -> the Debian package that installs it (`make lab-packages` installs these).
MATRIX = {"6.1": "linux-image-amd64", "6.12": "linux-image-6.12-amd64"}
BOOT = Path("/boot")
MODULES = Path("/lib/modules")


class LabError(Exception):
    """A one-line reason the lab cannot run, saying what to do."""


@dataclass(frozen=True)
class Kernel:
    series: str  # "6.1"
    release: str  # "6.1.0-57-amd64", as `uname -r` says inside the guest
    image: Path


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def find(series: str) -> Kernel:
    """The newest installed Debian kernel of `series`, with its modules (vng loads 9p and
    virtio from them: Debian builds those as modules)."""
    if series not in MATRIX:
        raise LabError(f"no lab kernel {series!r}; choose from {', '.join(MATRIX)}")
    # "vmlinuz-6.1.*" does not match 6.12: the series is followed by a dot.
    releases = [p.name.removeprefix("vmlinuz-") for p in BOOT.glob(f"vmlinuz-{series}.*")]
    releases = [r for r in releases if r.endswith("-amd64") and (MODULES / r).is_dir()]
    if not releases:
        raise LabError(f"no {series} kernel in {BOOT}: install {MATRIX[series]} (make lab-packages)")
    release = max(releases, key=_version_key)
    return Kernel(series, release, BOOT / f"vmlinuz-{release}")


def selected(choice: str) -> list[Kernel]:
    """The kernels named by --kernel (a series, or "all")."""
    return [find(s) for s in (MATRIX if choice == "all" else [choice])]


def vng() -> Path:
    """virtme-ng's command, from this interpreter's environment (the lab extra)."""
    missing = [name for name in ("qemu-system-x86_64", "busybox") if not shutil.which(name)]
    if missing:
        raise LabError(f"the kernel lab needs {' and '.join(missing)}: install qemu-system-x86 and busybox-static (make lab-packages)")
    command = Path(sys.executable).parent / "vng"
    if not command.exists():
        raise LabError(f"the kernel lab needs virtme-ng in {command.parent}: pip install -e '.[lab]' (make lab-packages)")
    return command
