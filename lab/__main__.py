"""python -m lab: boot the lab kernels and run commands inside them.

  python -m lab kernels                               the matrix and the installed images
  python -m lab run [--kernel 6.1|6.12|all] -- CMD    CMD inside each kernel; exit code: the first failure's
  python -m lab facts [--kernel ...] [--out DIR]      dump each kernel's tracepoint formats and facts
  python -m lab live [--kernel ...] [PYTEST ARGS]     the live tests, inside each kernel
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lab import kernels, vm
from lab.kernels import LabError

CHECKOUT = Path(__file__).resolve().parent.parent
# numba's cache for the guests, kept between lab runs (compiling under TCG takes minutes).
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chargeplay-lab"
# The live tests run inside each kernel: those that work on cgroup v2 hosts.
LIVE_TESTS = ["tests/test_collect_live.py", "tests/test_validate_live.py"]
TIMEOUT = 15 * 60  # per kernel: the lab's share of CI is 25 minutes for the whole matrix


def run_in(kernel: kernels.Kernel, command: list[str], timeout: float, run_dir: Path) -> int:
    """`command` inside `kernel`, from the checkout, after lab/guest.sh set the guest up."""
    CACHE.mkdir(parents=True, exist_ok=True)
    inner = [str(CHECKOUT / "lab" / "guest.sh"), str(run_dir), str(CACHE), sys.prefix, *command]
    # vng starts the command in the current directory when the guest can see it.
    os.chdir(CHECKOUT)
    started = time.monotonic()
    print(f"lab: booting {kernel.release} under TCG, run dir {run_dir}", file=sys.stderr, flush=True)
    code = vm.boot(kernel, shlex.join(inner), [run_dir, CACHE], timeout, scratch=run_dir)
    print(f"lab: {kernel.release}: exit code {code} after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return code


def run_matrix(choice: str, command: list[str], timeout: float, keep: Path | None = None) -> int:
    """Every selected kernel, even after one fails; the first failure's code (0 if none).

    "{run}" in `command` is the guest-writable run directory; with `keep`, what the command
    left in {run}/out is copied there afterwards.
    """
    failures = []
    for kernel in kernels.selected(choice):
        run_dir = Path(tempfile.mkdtemp(prefix=f"chargeplay-lab-{kernel.series}-"))
        try:
            code = run_in(kernel, [a.replace("{run}", str(run_dir)) for a in command], timeout, run_dir)
            if keep is not None and (run_dir / "out").is_dir():
                shutil.copytree(run_dir / "out", keep, dirs_exist_ok=True)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        if code != 0:
            failures.append((kernel.release, code))
    for release, code in failures:
        print(f"lab: FAILED on {release} (exit code {code})", file=sys.stderr)
    return failures[0][1] if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("kernels", help="list the matrix and the installed kernels")
    for name in ("run", "facts", "live"):
        p = sub.add_parser(name)
        p.add_argument("--kernel", default="all", choices=[*kernels.MATRIX, "all"])
        p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per kernel, boot included")
        if name == "facts":
            p.add_argument("--out", type=Path, default=CHECKOUT / "tests" / "data" / "kernels")
        p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = getattr(args, "command", [])
    command = command[1:] if command[:1] == ["--"] else command
    try:
        if args.action == "kernels":
            for series, package in kernels.MATRIX.items():
                try:
                    print(f"{series}: {kernels.find(series).image}")
                except LabError as why:
                    print(f"{series}: {why}")
            return 0
        kernels.vng()  # qemu, busybox and virtme-ng, or one line saying what to install
        if args.action == "run":
            if not command:
                raise LabError("give a command: python -m lab run -- COMMAND")
            return run_matrix(args.kernel, command, args.timeout)
        if args.action == "facts":
            # the system python: the facts need the standard library and collect.cgroup only, and it starts fast under TCG
            return run_matrix(args.kernel, ["/usr/bin/python3", "-m", "lab.facts", "{run}/out", "--memory-high-test"],
                              args.timeout, keep=args.out)
        pytest = [f"{sys.prefix}/bin/python", "-m", "pytest", "-v", *LIVE_TESTS, *command]
        return run_matrix(args.kernel, pytest, args.timeout)
    except LabError as why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    except vm.Stopped as why:
        print(f"lab: stopped by {why}; the VM is gone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
