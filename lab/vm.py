"""Boot one kernel with virtme-ng, run a command inside, and make sure qemu is gone afterwards.

vng runs qemu as a grandchild (vng -> sh -> virtme-run -> fork -> qemu), so killing vng alone
would leave qemu running: the whole tree is started in a new session and killed by process
group. A guardian process kills the group too if this process dies without cleaning up
(SIGKILL): it waits for EOF on a pipe that only this process holds open.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab.kernels import Kernel, LabError, vng

# KVM fails on these machines (qemu stops at "failed to set MSR 0x10a", or hangs with the
# MSR masked): the lab runs under TCG, about 10-40x slower than native. Multi-threaded TCG
# (qemu 7.2) let a vCPU run a tracepoint site's int3 after the kernel had finished patching
# it (text_poke_bp): "Oops: int3" in __schedule, a panic, vng's exit code 255, in about half
# the 6.12 runs while a capture switched its tracepoints on or off. One thread runs both
# vCPUs in turn, so a patched site is never stale on the other one.
MEMORY_MIB = 2048
CPUS = 2
QEMU_FLAGS = ["--disable-kvm", "--qemu-opts=-accel tcg,thread=single", "--memory", f"{MEMORY_MIB}M", "--cpus", str(CPUS),
              "--user", "root",
              # The guest kernel's console, which vng silences by default, at errors and worse
              # (oopses, panics, OOM kills): when a guest dies, its last words are in our output.
              "--verbose", "--append", "loglevel=4"]
TIMED_OUT = 124  # like timeout(1)
GUEST_DIED = 255  # vng's code when the guest ended without handing back its command's
# A guest prints its first line (lab/guest.sh: "up after") 20-40 s after qemu starts; one that
# says nothing for this long never started its command, and waiting out the run's timeout
# would only hide that.
SILENT_BOOT = 300.0

# The runner writes "done" before closing the pipe; without it the runner died, and the scratch
# directory (which its caller would have read and removed) goes too.
_GUARDIAN = """
import os, shutil, signal, sys
said = sys.stdin.buffer.read()  # returns at EOF: the lab runner exited or died
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except ProcessLookupError:
    pass
if said != b"done":
    for path in sys.argv[2:]:
        shutil.rmtree(path, ignore_errors=True)
"""


def numa_flags(nodes: int) -> list[str]:
    """vng's flags for a guest of `nodes` NUMA nodes that share its memory and CPUs evenly
    (qemu wants the nodes' memory to add up to the guest's); none for one node, the guest as
    it always was."""
    if not 1 <= nodes <= CPUS:
        raise LabError(f"--numa {nodes}: the guest has {CPUS} CPUs, so 1 to {CPUS} NUMA nodes")
    if nodes == 1:
        return []

    def start(total: int, node: int) -> int:  # where `node`'s share of `total` starts
        return total * node // nodes

    flags = []
    for node in range(nodes):
        memory = start(MEMORY_MIB, node + 1) - start(MEMORY_MIB, node)
        flags += ["--numa", f"{memory}M,cpus={start(CPUS, node)}-{start(CPUS, node + 1) - 1}"]
    return flags


# The --disk image, in the run directory; lab/guest.sh mounts it at /var/tmp.
DISK_IMAGE = "var-tmp.img"
DISK_MIB_MIN = 64  # ext4's journal and metadata take a few MiB of it


def check_disk(mib: int) -> None:
    if mib < DISK_MIB_MIN:
        raise LabError(f"--disk {mib}: give at least {DISK_MIB_MIN} MiB")


def make_disk(image: Path, mib: int) -> Path:
    """A sparse ext4 image of `mib` MiB at `image` (removed with the run directory)."""
    check_disk(mib)
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not Path(mkfs).exists():
        raise LabError("--disk needs mkfs.ext4: install e2fsprogs")
    with open(image, "wb") as file:
        file.truncate(mib << 20)
    subprocess.run([mkfs, "-q", "-F", "-L", "var-tmp", str(image)], check=True)
    return image


class Stopped(Exception):
    """A signal asked the runner to stop."""


def raise_stop(signum: int, _frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def _kill_group(pgid: int) -> None:
    """SIGTERM the group (qemu exits on it), then SIGKILL what is left; wait until it is empty."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _copy(pipe, spoke: threading.Event) -> None:
    """The guest's output to ours, as it comes."""
    for chunk in iter(lambda: pipe.read1(65536), b""):
        spoke.set()
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


def boot(kernel: Kernel, command: str, rwdirs: list[Path], rodirs: list[Path], timeout: float,
         scratch: Path | None = None, numa: int = 1, disk: Path | None = None) -> int:
    """Run `command` (a shell string) as root inside `kernel`; stream its output to ours.
    `rwdirs` are writable inside, `rodirs` shared on their own (lab/guest.sh caches them);
    `scratch` is removed by the guardian if this process dies before its caller can; the guest
    has `numa` NUMA nodes, and `disk` (an image) as its first virtio-blk disk, /dev/vda.

    Returns the command's exit code (vng passes it through), TIMED_OUT after `timeout` seconds,
    or after SILENT_BOOT if the guest printed nothing by then.
    """
    argv = [str(vng()), "--run", str(kernel.image), *QEMU_FLAGS, *numa_flags(numa)]
    for path in rwdirs:
        argv += ["--rwdir", str(path)]
    for path in rodirs:
        argv += ["--rodir", str(path)]
    if disk is not None:
        argv += ["--disk", str(disk)]  # vng attaches it over virtio-blk (virtme-run --blk-disk)
    argv += ["--", command]
    # vng finds virtme-run on PATH, beside itself in the venv.
    env = {**os.environ, "PATH": f"{Path(argv[0]).parent}:{os.environ.get('PATH', '')}"}
    previous = {s: signal.signal(s, raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    vm = guardian = None
    started = time.monotonic()
    try:
        # Through a pipe: qemu opens /proc/self/fd/1 and 2 by path, which truncates a file they
        # were redirected to (and what was written before boot would be lost).
        vm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
        spoke = threading.Event()
        copier = threading.Thread(target=_copy, args=(vm.stdout, spoke), daemon=True)
        copier.start()
        guardian = subprocess.Popen([sys.executable, "-c", _GUARDIAN, str(vm.pid), *([str(scratch)] if scratch else [])], stdin=subprocess.PIPE,
                                    start_new_session=True)
        if not spoke.wait(min(SILENT_BOOT, timeout)) and vm.poll() is None:
            print(f"lab: {kernel.release} printed nothing in {SILENT_BOOT:.0f} s: stopped (the guest never started "
                  "its command; a kernel command line over 2048 bytes, which a long checkout path makes, is "
                  "cut short like this)", file=sys.stderr)
            return TIMED_OUT
        try:
            return vm.wait(timeout=max(timeout - (time.monotonic() - started), 0))
        except subprocess.TimeoutExpired:
            print(f"lab: {kernel.release} still running after {timeout:.0f} s: stopped", file=sys.stderr)
            return TIMED_OUT
    finally:
        if vm is not None:
            _kill_group(vm.pid)
            vm.wait()
            copier.join(timeout=5)
        if guardian is not None:
            guardian.stdin.write(b"done")
            guardian.stdin.close()
            guardian.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

