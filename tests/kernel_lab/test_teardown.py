"""The lab never leaves qemu behind: not when its command ends, nor when it is stopped or killed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labtools import CHECKOUT, lab

pytestmark = pytest.mark.lab


def _qemus_for(run_dir: str) -> list[int]:
    """qemu processes whose command line names the run directory (its --rwdir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmdline and run_dir in cmdline:
                found.append(int(proc.name))
    return found


def _start_sleeping_vm() -> tuple[subprocess.Popen, str]:
    """A runner whose guest sleeps; returns once its qemu is running."""
    runner = subprocess.Popen([sys.executable, "-m", "lab", "run", "--kernel", "6.1", "--", "sleep", "600"],
                              cwd=CHECKOUT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = runner.stderr.readline()
    run_dir = re.search(r"run dir (\S+)", line).group(1)
    deadline = time.monotonic() + 60
    while not _qemus_for(run_dir):
        assert time.monotonic() < deadline, "qemu did not start"
        time.sleep(0.5)
    return runner, run_dir


def _gone(run_dir: str, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while _qemus_for(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _qemus_for(run_dir)


def test_the_command_whatever_its_length_and_its_exit_code_come_back_and_qemu_is_gone(vng):
    # 4000 bytes: more than a kernel command line holds (2048), where vng would put the command.
    long_argument = "x" * 4000
    result = lab("run", "--kernel", "6.1", "--", "sh", "-c", 'printf "%s\\n" "${#1}"; exit 7', "sh", long_argument,
                 timeout=10 * 60)
    assert result.returncode == 7, result.stderr[-2000:]
    # The guest kernel's console shares the output (lab/vm.py): its lines start "[ seconds]".
    command_lines = [line for line in result.stdout.splitlines() if line and not re.match(r"\[\s*\d+\.\d+\]", line)]
    assert command_lines[-1] == "4000", result.stdout[-2000:]
    run_dir = re.search(r"run dir (\S+)", result.stderr).group(1)
    assert not _qemus_for(run_dir) and not Path(run_dir).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_runner_stops_qemu(vng, sig):
    runner, run_dir = _start_sleeping_vm()
    runner.send_signal(sig)
    assert runner.wait(timeout=30) == 130
    assert _gone(run_dir, within=1) and not Path(run_dir).exists()


def test_a_killed_runner_leaves_no_qemu(vng):
    """SIGKILL gives the runner no chance: its guardian kills qemu's process group and removes
    the run directory."""
    runner, run_dir = _start_sleeping_vm()
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert _gone(run_dir)
    time.sleep(1)
    assert not Path(run_dir).exists()
