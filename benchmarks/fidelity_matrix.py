"""The fidelity matrix: every workload of the zoo under three limits, each run judged by validate.

What it runs
------------
For each workload of the zoo (`python3 -m zoo --list`), one calibration run under a roomy
memory.max (--roomy, default 1G) gives the workload's own peak P, as the kernel counted it.
The three cells' memory.max follow from P, rounded to whole MiB:

    no pressure     1.5 P   never reached: the model must not invent reclaim
    reclaim-bound   0.7 P   the kernel takes back what it can (page cache, dentries...)
    OOM region      0.35 P  below what most workloads hold unreclaimably: kills expected

Each cell runs --runs times (default 3) as a user would:
`chargeplay validate -o DIR --memory-max LIMIT -- python3 -m zoo NAME`. The kernel varies
from run to run, so each prediction is judged against its own run (validate's fidelity.json).

What it prints
--------------
Per run: predicted/observed of every metric validate reports on this cgroup version, and
which targets are met (validate's targets; a run whose trace lost events is "not measured",
which counts as a miss). Per cell: how many runs meet all targets, the runs missing each target
they missed, and the runs not measured. At the end, per kernel: the share of runs that meet all
targets (target: 90%) and the measured runs where the model missed an OOM kill (target: none).
--markdown FILE writes the cell table for the README, --json FILE every run's fidelity.json, both
rewritten after each cell (an interrupted matrix keeps what it measured). It asserts nothing.

Run it as root from the project directory (validate needs tracefs and a memory cgroup):

    .venv/bin/python benchmarks/fidelity_matrix.py [--workload NAME ...] [--runs N] [--markdown FILE]

--keep DIR keeps every run's validate directory (trace, result, fidelity.json) under DIR, and
--json then names each run's directory (relative to the --json file's own when under it, so
that the two can be moved together). `--rejudge FILE` (FILE: such a --json) judges those
runs again under today's model, without running anything: the same traces and the same
observations, a new replay each. A model change is judged out of sample only on new runs.
With --out-of-sample each kept run is predicted from its workload's calibration run instead
(that trace replayed under the run's limit): no decision of the judged run's kernel (its
reclaim, its OOM kills, its reclaim cost) then reaches the model.

Inside a lab kernel: python -m lab run --kernel 6.12 --keep DIR -- .venv/bin/python
benchmarks/fidelity_matrix.py --scale 0.25 --json {run}/out/matrix.json (under TCG a run takes minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rich.progress import Progress

CHECKOUT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
REGIONS = {"no pressure": 1.5, "reclaim-bound": 0.7, "OOM region": 0.35}
TARGET_ALL_MET = 0.90


@dataclass
class Run:
    workload: str
    region: str
    limit: int
    fidelity: dict  # validate's fidelity.json, or {"error": ...} when validate failed
    path: str | None = None  # the validate directory, when kept

    @property
    def rows(self) -> dict[str, dict]:
        return {row["metric"]: row for row in self.fidelity.get("rows", [])}

    def status(self, metric: str) -> str:
        return self.rows[metric]["status"]

    @property
    def judged(self) -> list[str]:
        """The metrics with a target on this cgroup version (measured in this run or not)."""
        return [metric for metric, row in self.rows.items() if row["target"] is not None]

    @property
    def all_met(self) -> bool:
        return "error" not in self.fidelity and all(self.status(metric) == "met" for metric in self.judged)

    @property
    def measured(self) -> bool:
        """False where validate certified nothing (events lost) or failed."""
        return "error" not in self.fidelity and self.fidelity.get("measured", True)

    @property
    def missed_oom_kill(self) -> bool:
        kills = self.rows.get("OOM kills")
        return (self.measured and kills is not None and kills["observed"] is not None
                and kills["observed"] > kills["predicted"])


def zoo_workloads() -> list[str]:
    listing = subprocess.run(["python3", "-m", "zoo", "--list"], cwd=CHECKOUT, capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def validate(workload: str, region: str, limit: int, scratch: Path, scale: float = 1.0) -> Run:
    """One run of `chargeplay validate` in a new directory under SCRATCH."""
    out = Path(tempfile.mkdtemp(prefix=f"{workload}-{region.replace(' ', '-')}-", dir=scratch)) / "v"
    done = subprocess.run([sys.executable, "-m", "chargeplay.cli", "validate", "-o", str(out), "--memory-max", f"{limit // MiB}M",
                           "--", "python3", "-m", "zoo", "--scale", str(scale), workload], cwd=CHECKOUT, capture_output=True, text=True)
    if done.returncode != 0:
        return Run(workload, region, limit, {"error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]})
    return Run(workload, region, limit, json.loads((out / "fidelity.json").read_text()), str(out))


def cell_limits(peak: int) -> dict[str, int]:
    return {region: max(round(peak * share / MiB), 1) * MiB for region, share in REGIONS.items()}


def format_run(run: Run) -> str:
    if "error" in run.fidelity:
        return f"{run.workload:<16} {run.region:<14} {run.limit // MiB:>4}M  validate failed: {run.fidelity['error']}"
    marks = {"met": "ok", "not met": "MISS", "not measured": "n/m", "no target": ""}
    observed = lambda row: "-" if row["observed"] is None else f"{row['observed']:,}"  # noqa: E731
    cells = [f"{metric.split(' (')[0]} {row['predicted']:,}/{observed(row)} {marks[run.status(metric)]}".rstrip()
             for metric, row in run.rows.items() if metric != "final usage"]
    return f"{run.workload:<16} {run.region:<14} {run.limit // MiB:>4}M  " + "; ".join(cells)


def cell_table(runs: list[Run]) -> list[dict]:
    """Per cell: how many runs meet each judged target, and all of them."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.workload, run.region), []).append(run)
    table = []
    for (workload, region), cell in cells.items():
        metrics = sorted({metric for run in cell for metric in run.judged})
        table.append({
            "workload": workload, "region": region, "limit": f"{cell[0].limit // MiB}M", "runs": len(cell),
            "all targets": sum(run.all_met for run in cell),
            "not measured": sum(not run.measured for run in cell),
            **{metric: sum(run.status(metric) != "not met" for run in cell if metric in run.rows) for metric in metrics},
            "OOM kills missed": sum(run.missed_oom_kill for run in cell),
        })
    return table


SHORT_NAMES = {"reclaim invocations": "reclaim calls", "peak usage": "peak", "charge failures (failcnt)": "failcnt",
               "memory.events max": "events max", "memory.events high": "events high", "OOM kills": "OOM kills"}


def markdown(table: list[dict], kernel: str) -> str:
    """A row per workload, a column per limit region; each cell: runs meeting all targets of
    its runs, then how many runs missed each target they missed."""
    regions = [region for region in REGIONS if any(row["region"] == region for row in table)]
    cells = {(row["workload"], row["region"]): row for row in table}
    lines = [f"Kernel {kernel}: runs meeting every target / runs, and the runs missing each target missed.", "",
             "| workload | " + " | ".join(regions) + " |", "|---|" + "---|" * len(regions)]
    for workload in dict.fromkeys(row["workload"] for row in table):
        values = [format_cell(cells[workload, region]) if (workload, region) in cells else "-" for region in regions]
        lines.append(f"| {workload} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def format_cell(row: dict) -> str:
    missed = [f"{SHORT_NAMES[metric]} {row['runs'] - met}" for metric, met in row.items()
              if metric in SHORT_NAMES and met < row["runs"]]
    if row["not measured"]:
        missed.append(f"{row['not measured']} not measured")
    return f"{row['limit']}: {row['all targets']}/{row['runs']}" + (f" ({', '.join(missed)})" if missed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", action="append", help="a zoo workload (repeatable; default: all)")
    parser.add_argument("--region", action="append", choices=list(REGIONS), help="a limit region (repeatable; default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="the zoo's --scale: less work per run (the lab's emulated kernels run 10-40x slower)")
    parser.add_argument("--roomy", type=int, default=1024, help="MiB of memory.max for the calibration run")
    parser.add_argument("--markdown", type=Path, help="write the cell table here")
    parser.add_argument("--json", type=Path, help="write every run's fidelity.json here")
    parser.add_argument("--keep", type=Path, help="keep every run's validate directory under this directory")
    parser.add_argument("--rejudge", type=Path, help="judge the kept runs of this --json file again under today's model")
    parser.add_argument("--out-of-sample", action="store_true",
                        help="with --rejudge: predict each run from its workload's calibration run (kept beside it)")
    args = parser.parse_args()
    if os.geteuid() != 0 and not args.rejudge:
        print("error: run it as root: validate captures with tracefs in a new memcg", file=sys.stderr)
        return 2
    if args.rejudge:
        runs = rejudge(args.rejudge, args.out_of_sample)
        write_files(args, runs)
    else:
        runs = run_matrix(args)
    kernel = runs_kernel(runs)
    table = cell_table(runs)
    print()
    for row in table:
        print(f"{row['workload']:<16} {row['region']:<14} {row['limit']:>5}  all targets {row['all targets']}/{row['runs']}"
              f"  OOM kills missed {row['OOM kills missed']}")
    share = sum(run.all_met for run in runs) / len(runs) if runs else 0.0
    verdict = "met" if share >= TARGET_ALL_MET else "not met"
    print(f"\n{kernel}: {sum(run.all_met for run in runs)} of {len(runs)} runs meet all targets ({share:.0%}; "
          f"target {TARGET_ALL_MET:.0%}: {verdict}); OOM kills missed in {sum(run.missed_oom_kill for run in runs)} runs (target 0)")
    return 0


def run_matrix(args: argparse.Namespace) -> list[Run]:
    workloads = args.workload or zoo_workloads()
    regions = args.region or list(REGIONS)
    runs: list[Run] = []
    with scratch_directory(args.keep) as scratch, Progress() as progress:
        task = progress.add_task("fidelity matrix", total=len(workloads) * (1 + len(regions) * args.runs))
        for workload in workloads:
            calibration = validate(workload, "calibration", args.roomy * MiB, scratch, args.scale)
            progress.advance(task)
            if "error" in calibration.fidelity:
                progress.console.print(f"{workload}: calibration failed: {calibration.fidelity['error']}")
                progress.advance(task, len(regions) * args.runs)
                continue
            peak = calibration.rows["peak usage"]["observed"]
            limits = cell_limits(peak)
            progress.console.print(f"{workload}: peak {peak / MiB:.1f} MiB unlimited; limits "
                                   + ", ".join(f"{region} {limits[region] // MiB}M" for region in regions))
            for region in regions:
                for _ in range(args.runs):
                    run = validate(workload, region, limits[region], scratch, args.scale)
                    runs.append(run)
                    progress.console.print(format_run(run))
                    progress.advance(task)
                write_files(args, runs)  # after each cell: an interrupted matrix keeps what it measured
    return runs


@contextmanager
def scratch_directory(keep: Path | None) -> Iterator[Path]:
    """Where the runs' validate directories go: KEEP (created), or a temporary directory."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="chargeplay-matrix-") as scratch:
        yield Path(scratch)


def rejudge(listing: Path, out_of_sample: bool) -> list[Run]:
    """The kept runs of a --json listing, each judged again under today's model: replaying its
    own trace, or (out of sample) its workload's calibration run's."""
    from chargeplay.validation import Steps, predict_from, rejudge as rejudge_run

    quiet = Steps(capturing=lambda _: None, replaying=lambda _step, _done: None, say=lambda _: None)
    earlier = [Run(**{**run, "path": run.get("path") and str(listing.parent.resolve() / run["path"])})
               for run in json.loads(listing.read_text())]  # a relative path is the listing's own run
    runs = []
    with tempfile.TemporaryDirectory(prefix="chargeplay-rejudge-") as scratch, Progress() as progress:
        for n, run in enumerate(progress.track(earlier, description="judging again")):
            if run.path is None:
                progress.console.print(f"{run.workload} {run.region}: not kept ({run.fidelity.get('error', 'no directory')})")
                continue
            result = Path(scratch) / str(n)
            if out_of_sample:
                fidelity = predict_from(calibration_of(run), Path(run.path), result, quiet)
            else:
                fidelity = rejudge_run(Path(run.path), result, quiet)
            again = Run(run.workload, run.region, run.limit, fidelity, run.path)
            runs.append(again)
            progress.console.print(format_run(again))
    return runs


def runs_kernel(runs: list[Run]) -> str:
    """The kernel the runs ran on (a rejudged listing may come from another machine)."""
    return next((run.fidelity["kernel"] for run in runs if "kernel" in run.fidelity), os.uname().release)


def calibration_of(run: Run) -> Path:
    """The calibration run kept beside a run (validate() names both after the workload)."""
    keep = Path(run.path).parent.parent
    found = sorted(keep.glob(f"{run.workload}-calibration-*/v"))
    if not found:
        raise SystemExit(f"error: no calibration run of {run.workload} kept in {keep}")
    return found[0]


def write_files(args: argparse.Namespace, runs: list[Run]) -> None:
    if args.markdown:
        args.markdown.write_text(markdown(cell_table(runs), runs_kernel(runs)))
    if args.json:
        args.json.write_text(json.dumps([listed(run, args.json.parent.resolve()) for run in runs], indent=1))


def listed(run: Run, base: Path) -> dict:
    """A run as --json lists it: its directory relative to the listing's own where it lies
    under it, so that the two can move together (the lab copies both out of its guest)."""
    entry = dict(run.__dict__)
    if run.path is not None and Path(run.path).is_relative_to(base):
        entry["path"] = str(Path(run.path).relative_to(base))
    return entry


if __name__ == "__main__":
    sys.exit(main())
