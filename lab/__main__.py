"""python -m lab: boot the lab kernels and run commands inside them.

  python -m lab kernels                               the matrix and the installed images
  python -m lab run [--kernel 6.1|6.12|all] [--keep DIR] [--numa N] [--disk MIB] -- CMD
                                                      CMD inside each kernel ({run}: a directory it may write;
                                                      --keep: copy {run}/out to DIR; --numa: a guest of N NUMA
                                                      nodes; --disk: an ext4 disk of MIB at /var/tmp); exit
                                                      code: the first failure's
  python -m lab facts [--kernel ...] [--out DIR]      dump each kernel's tracepoint formats and facts
  python -m lab live [--kernel ...] [PYTEST ARGS]     the live tests (LIVE_TESTS, or those PYTEST ARGS name) inside each kernel
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

from lab import kernels, vm
from lab.kernels import LabError

CHECKOUT = Path(__file__).resolve().parent.parent
# numba's cache for the guests, kept between lab runs (compiling under TCG takes minutes).
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chargeplay-lab"
# Each run's guest-writable directory: not under /tmp, which the guest covers with its own.
RUNS = CACHE.parent / "chargeplay-lab-runs"
# The live tests that run inside each kernel (make test runs them all natively), chosen for
# what differs on these kernels and cgroup v2: capture checked against the memcg's own kmem
# counter, memory.high set and enforced, --cgroup, a kill while tracing, the eBPF backend with
# its charge probes attached and checked against memory.events, validate's observations on v2,
# and the kprobes that stand in for the memcg tracepoints these kernels lack, checked against
# the memcg's memory.stat (one capture: 72 s inside 6.1 on a quiet machine), memcgs a workload
# makes below the target (their stat events kept, their OOM kills counted), and the zoo's
# sibling memcgs under a shared limit, and the flight recorder's triggers on v2's memory.events;
# and a kernel rule of memory.high the model mirrors (a thread answers for its clone's charge).
# Every capture in the guest goes through the delegated parent guest.sh names.
LIVE_TESTS = [
    "tests/test_collect_live.py::test_file_creation_is_recorded_as_accounted_dentries_of_the_workload_only",
    "tests/test_collect_live.py::test_memory_high_on_cgroup_v2_is_set_and_enforced",
    "tests/test_collect_live.py::test_attach_to_an_existing_cgroup",
    "tests/test_collect_live.py::test_collector_cpus_keep_every_collector_thread_there_and_the_workload_on_ours[True]",
    "tests/test_crash_safety_live.py::test_sigkill_of_collector_and_guardian_at_any_point[4.0]",
    "tests/test_ebpf_live.py::test_auto_says_which_backend_it_chose_and_whether_charge_probes_attached",
    "tests/test_ebpf_live.py::test_charge_probes_agree_with_the_memcgs_own_events",
    "tests/test_ebpf_live.py::test_records_that_go_round_a_small_ring_buffer_many_times_arrive_whole",
    "tests/test_ebpf_live.py::test_frees_of_objects_whose_allocations_the_trace_leaves_out_are_left_out_too",
    "tests/test_ebpf_live.py::test_memcg_stat_events_the_kernel_cannot_give_are_said_in_the_manifest_and_by_replay",
    "tests/test_validate_live.py::test_validate_on_cgroup_v2_observes_the_memcgs_own_events_and_peak",
    "tests/test_validate_live.py::test_a_cell_of_the_fidelity_matrix_meets_its_targets_in_most_runs",
    "tests/test_memcg_probes_live.py::test_kprobes_record_the_memcgs_page_cache_and_anon_and_leave_nothing",
    "tests/test_collect_live.py::test_stat_events_of_memcgs_below_the_target_are_kept_and_of_later_memcgs_elsewhere_not",
    "tests/test_collect_live.py::test_an_oom_kill_below_the_target_is_counted_as_the_targets",
    "tests/test_collect_live.py::test_the_task_tree_is_recorded_forks_threads_execs_and_exits",
    "tests/test_collect_live.py::test_only_slab_allocations_memcg_charges_are_recorded_unless_all_are_asked_for",
    "tests/test_zoo_live.py::test_the_workload_charges_what_its_docstring_says[siblings]",
    "tests/test_kernel_rules_live.py::test_a_thread_answers_for_the_pages_its_parent_charged_above_high_in_the_clone",
    "tests/test_flight_recorder_live.py::test_a_count_of_memory_events_rising_ends_the_capture[high:5]",
    "tests/test_flight_recorder_live.py::test_an_oom_kill_ends_the_capture_with_the_lead_up_kept",
]
# numba compiles for the CPU it runs on unless told otherwise; "generic" code has the same
# cache key on this machine and on qemu's emulated CPU, so the guests load what this machine
# compiled (lab/guest.sh sets the same).
GENERIC_CPU = {"NUMBA_CPU_NAME": "generic"}
# Every numba function `validate` and replay run: the replay engine under every built-in policy,
# on a bundled trace of a lab kernel.
WARM_UP = """
import subprocess, sys, tempfile
from traces.samples import sample_path
with tempfile.TemporaryDirectory() as scratch:
    done = subprocess.run([sys.prefix + "/bin/chargeplay", "replay", str(sample_path("file-storm-6.12")),
                           "-o", scratch + "/result"], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
"""
PR_SET_PDEATHSIG = 1  # prctl(2)
TIMEOUT = 40 * 60  # per kernel, the kernels side by side (the live tests take about 28 minutes)


def run_in(kernel: kernels.Kernel, command: list[str], timeout: float, run_dir: Path, numa: int = 1,
           disk_mib: int | None = None) -> int:
    """`command` inside `kernel` (with `numa` NUMA nodes, and an ext4 disk of `disk_mib` at
    /var/tmp), from the checkout, after lab/guest.sh set the guest up."""
    if not (Path(sys.prefix) / "polars-compat").is_dir():  # lab/guest.sh uses it
        raise LabError(f"{sys.prefix}/polars-compat is missing (polars's runtime for the guests): run make lab-packages")
    CACHE.mkdir(parents=True, exist_ok=True)
    python_trees = [Path(sys.prefix), Path(sysconfig.get_paths()["stdlib"])]
    # The command reaches the guest in a file: on the kernel command line (where vng puts it)
    # a long one would be cut at 2048 bytes, and the guest would never start it.
    (run_dir / "command").write_text(shlex.join(command))
    disk = vm.make_disk(run_dir / vm.DISK_IMAGE, disk_mib) if disk_mib else None
    inner = [str(CHECKOUT / "lab" / "guest.sh"), str(run_dir), str(CACHE), *map(str, python_trees)]
    inner += [str(disk)] if disk else []
    # vng starts the command in the current directory when the guest can see it.
    os.chdir(CHECKOUT)
    started = time.monotonic()
    print(f"lab: booting {kernel.release} under TCG, run dir {run_dir}", file=sys.stderr, flush=True)
    code = vm.boot(kernel, shlex.join(inner), [run_dir, CACHE], python_trees, timeout, scratch=run_dir, numa=numa, disk=disk)
    print(f"lab: {kernel.release}: exit code {code} after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return code


def warm_numba_cache() -> None:
    """Compile the numba functions here, natively, into the guests' cache: under TCG the replay
    engine alone takes longer to compile than a test may run."""
    print("lab: compiling numba's functions for the guests (generic CPU)", file=sys.stderr, flush=True)
    env = {**os.environ, **GENERIC_CPU, "NUMBA_CACHE_DIR": str(CACHE / "numba")}
    subprocess.run([sys.executable, "-c", WARM_UP], env=env, cwd=CHECKOUT, check=True)


def run_kernel(series: str, command: list[str], timeout: float, keep: Path | None = None, numa: int = 1,
               disk_mib: int | None = None) -> int:
    """`command` inside the kernel of `series`, booted with `numa` NUMA nodes (and an ext4 disk
    of `disk_mib` at /var/tmp); its exit code.

    "{run}" in `command` is the guest-writable run directory; with `keep`, what the command
    left in {run}/out is copied there afterwards.
    """
    kernel = kernels.find(series)
    RUNS.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kernel.series}-", dir=RUNS))
    try:
        code = run_in(kernel, [a.replace("{run}", str(run_dir)) for a in command], timeout, run_dir, numa, disk_mib)
        if keep is not None and (run_dir / "out").is_dir():
            shutil.copytree(run_dir / "out", keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code


# A failed kernel's last lines, printed again when all have ended: the end of pytest's failure
# report and its short summary (which drops the assertion's message when a test's name is long;
# the live tests list only their 5 slowest so that the report's end fits), or how a boot failed,
# would otherwise be lost among the other kernel's lines.
TAIL_LINES = 30


def in_parallel(args: argparse.Namespace, command: list[str], series: list[str]) -> int:
    """The same action for each kernel at once, each in its own runner (`python -m lab`), their
    lines prefixed with the kernel; the first failure's code (0 if none). A TCG guest keeps about
    one of this machine's cores busy, so two side by side take about the time of one."""
    options = ["--timeout", str(args.timeout)]
    for name in ("out", "keep", "numa", "disk"):  # facts --out, run --keep, --numa and --disk
        if getattr(args, name, None) is not None:
            options += [f"--{name}", str(getattr(args, name))]
    runners = {name: subprocess.Popen([sys.executable, "-m", "lab", args.action, "--kernel", name, *options, "--", *command],
                                      cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      preexec_fn=_terminate_with_parent)
               for name in series}
    tails = {name: collections.deque(maxlen=TAIL_LINES) for name in series}
    relays = [threading.Thread(target=_relay, args=(name, runner.stdout, tails[name])) for name, runner in runners.items()]
    for relay in relays:
        relay.start()
    try:
        codes = {name: runner.wait() for name, runner in runners.items()}
    finally:  # stopped: each runner stops its own VM on SIGTERM
        for runner in runners.values():
            if runner.poll() is None:
                runner.terminate()
                runner.wait()
        for relay in relays:
            relay.join()
    failed = [(name, code) for name, code in codes.items() if code != 0]
    for name, code in failed:  # again at the end, where a log's tail shows it: which tests failed
        print(f"lab: FAILED on {name} (exit code {code}); its last lines:", file=sys.stderr)
        sys.stderr.writelines(tails[name])
    return failed[0][1] if failed else 0


def _terminate_with_parent() -> None:
    """In a runner: SIGTERM (which stops its VM) when the parallel runner dies, even by SIGKILL."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _relay(name: str, lines, tail: collections.deque) -> None:
    for line in lines:
        prefixed = f"[{name}] {line}"
        sys.stdout.write(prefixed)
        sys.stdout.flush()
        tail.append(prefixed)


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
        if name == "run":
            p.add_argument("--keep", type=Path, help="copy what CMD wrote in {run}/out into this directory")
            p.add_argument("--numa", type=int, default=1, metavar="N",
                           help="boot the guest with N NUMA nodes that share its memory and CPUs evenly (default 1)")
            p.add_argument("--disk", type=int, metavar="MIB",
                           help="mount an ext4 disk of MIB at /var/tmp (else tmpfs there): page cache, dentries and "
                                "inodes that reclaim can take back, as on a host's disk")
        p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = getattr(args, "command", [])
    command = command[1:] if command[:1] == ["--"] else command
    try:
        if args.action == "run":
            vm.numa_flags(args.numa)  # a bad --numa or --disk fails here, not once in each kernel's runner
            if args.disk is not None:
                vm.check_disk(args.disk)
        if args.action == "kernels":
            for series, package in kernels.MATRIX.items():
                try:
                    print(f"{series}: {kernels.find(series).image}")
                except LabError as why:
                    print(f"{series}: {why}")
            return 0
        kernels.vng()  # qemu, busybox and virtme-ng, or one line saying what to install
        if args.action == "live":  # (each parallel runner again: then all from the cache, in seconds)
            warm_numba_cache()
        if args.kernel == "all":
            for sig in (signal.SIGTERM, signal.SIGHUP):  # stop the runners too (the finally in in_parallel)
                signal.signal(sig, vm.raise_stop)
            return in_parallel(args, command, [kernel.series for kernel in kernels.selected("all")])
        if args.action == "run":
            if not command:
                raise LabError("give a command: python -m lab run -- COMMAND")
            return run_kernel(args.kernel, command, args.timeout, keep=args.keep, numa=args.numa, disk_mib=args.disk)
        if args.action == "facts":
            # the system python: the facts need the standard library and collect.cgroup only, and it starts fast under TCG
            return run_kernel(args.kernel, ["/usr/bin/python3", "-m", "lab.facts", "{run}/out", "--memory-high-test"],
                              args.timeout, keep=args.out)
        pytest = [f"{sys.prefix}/bin/python", "-m", "pytest", "-v", "--durations=5", *(command or LIVE_TESTS)]
        code = run_kernel(args.kernel, pytest, args.timeout)
        if code == vm.GUEST_DIED:  # pytest itself exits 0 to 5
            print("lab: the guest died without an exit code (its kernel's last words are above; multi-threaded TCG "
                  "used to panic 6.12 this way, see lab/vm.py): running the live tests once more",
                  file=sys.stderr, flush=True)
            code = run_kernel(args.kernel, pytest, args.timeout)
        return code
    except LabError as why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    except vm.Stopped as why:
        print(f"lab: stopped by {why}; the VM is gone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
