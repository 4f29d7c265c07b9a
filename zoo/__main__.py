"""python3 -m zoo --list | NAME [--scale N]: runs one workload, then prints what it made."""
from __future__ import annotations

import argparse
import signal
import sys
import time

from . import WORKLOADS
from .support import remove_leftovers


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse's own prints usage too)
        sys.stderr.write(f"error: {message} (python3 -m zoo --list | NAME [--scale N])\n")
        sys.exit(2)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM (chargeplay collect stops its workload so) unwinds like an exception: every
    workload's finally blocks remove what it made and reap its children."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python3 -m zoo", description="Workloads that charge memory cgroups in different ways.")
    parser.add_argument("name", nargs="?", help="the workload to run (see --list)")
    parser.add_argument("--scale", type=_scale, default=1.0, help="multiplies the amount of work (default 1)")
    parser.add_argument("--list", action="store_true", help="name each workload and what it charges")
    args = parser.parse_args(argv)
    if args.list:
        if args.name:
            parser.error("--list takes no workload name")
        width = max(map(len, WORKLOADS))
        for workload in WORKLOADS.values():
            print(f"{workload.name:<{width}}  {workload.summary}")
        return 0
    if not args.name:
        parser.error("name a workload or give --list")
    if args.name not in WORKLOADS:
        parser.error(f"no workload named {args.name!r}; there are: {', '.join(WORKLOADS)}")
    signal.signal(signal.SIGTERM, _terminated)
    started = time.monotonic()
    try:
        made = WORKLOADS[args.name].run(args.scale)
    finally:
        remove_leftovers()
    seconds = time.monotonic() - started
    print(f"{args.name}: " + " ".join(f"{key}={value}" for key, value in made.items()) + f" seconds={seconds:.2f}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
