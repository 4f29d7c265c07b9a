"""The BPF loader process: compiles and attaches collect/kmem_bpf.c with bcc, hands its maps'
file descriptors to the collector, and holds the programs attached until the collector
closes the socket between them (or dies: the loader gets SIGKILL with it, PR_SET_PDEATHSIG).

Why a process of its own: loading libbcc (with its LLVM and clang) into a process changes
how that process's numba-compiled code behaves (a replay test gave other results after
it), so bcc is kept out of the collector and of the test runner; only file descriptors
cross over. Standard library only: it imports nothing of chargeplay's that uses numba.

bcc comes from Debian's python3-bpfcc. The project's venv does not see Debian's
dist-packages, so only the `bcc` package is imported from there, by path, after checking
that Debian's python3 has this interpreter's major.minor version (bcc is pure Python over
ctypes and libbcc.so, written for that version).

    python -m collect.bpf_loader --check          prints why eBPF is unavailable (exit 1) or nothing
    python -m collect.bpf_loader SOCKET_FD CFLAG...  the loader (started by collect.ebpf)
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

BPF_SOURCE = Path(__file__).with_name("kmem_bpf.c")
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
DEBIAN_PYTHON = "/usr/bin/python3"
MAPS = ("records", "named", "tracked", "config", "counters")  # handed over in this order


class Unavailable(RuntimeError):
    """The eBPF backend cannot run here; the message says what is missing."""


def _debian_python_version() -> tuple[int, int] | None:
    try:
        out = subprocess.run([DEBIAN_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def headers_dir() -> Path:
    return Path("/lib/modules") / platform.release() / "build"


def load_bcc() -> Any:
    """The bcc module, or Unavailable saying what is missing (root, bcc, headers)."""
    if os.geteuid() != 0:
        raise Unavailable("loading BPF programs needs root")
    installed = importlib.util.find_spec("bcc") is not None
    if not installed:
        if not (DEBIAN_BCC / "__init__.py").exists():
            raise Unavailable("bcc is not installed (Debian package python3-bpfcc; make test-packages)")
        debian = _debian_python_version()
        if debian != tuple(sys.version_info[:2]):
            raise Unavailable(f"Debian's bcc is for Python {debian}, this is Python {tuple(sys.version_info[:2])}")
    if not (headers_dir() / "include").is_dir():
        raise Unavailable(f"no kernel headers at {headers_dir()} (Debian's linux-headers-amd64 linked there; make test-packages)")
    try:
        if installed:
            import bcc  # type: ignore[import-not-found]
            return bcc
        spec = importlib.util.spec_from_file_location("bcc", DEBIAN_BCC / "__init__.py", submodule_search_locations=[str(DEBIAN_BCC)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["bcc"] = module
        spec.loader.exec_module(module)
        return module
    except Exception as error:  # libbcc.so missing or unloadable, an incompatible bcc
        sys.modules.pop("bcc", None)
        raise Unavailable(f"bcc does not load: {error}") from None


# Charge probes: kernel function -> kmem_bpf.c's (entry, return) programs.
CHARGE_PROBES = {
    "try_charge_memcg": ("on_try_charge", "on_try_charge_return"),
    "__mem_cgroup_handle_over_high": ("on_handle_over_high", "on_handle_over_high_return"),
    "mem_cgroup_out_of_memory": ("on_out_of_memory", "on_out_of_memory_return"),
}


def charge_probe_problem(bpf: Any) -> str | None:
    """Attach the charge probes if the kernel allows; else why not (then none is attached)."""
    tracefs = next((p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")) if (p / "events").is_dir()), None)
    if tracefs is not None and not (tracefs / "kprobe_events").exists():
        return "kprobes are not built into this kernel (no kprobe_events in tracefs)"
    attached: list[tuple[str, bool]] = []
    try:
        for function, (entry, exit_) in CHARGE_PROBES.items():
            bpf.attach_kprobe(event=function.encode(), fn_name=entry.encode())
            attached.append((function, False))
            bpf.attach_kretprobe(event=function.encode(), fn_name=exit_.encode())
            attached.append((function, True))
    except Exception as error:
        for function, is_return in attached:
            (bpf.detach_kretprobe if is_return else bpf.detach_kprobe)(event=function.encode())
        return f"kprobe on {function} refused: {error}"
    return None


def _serve(sock: socket.socket, cflags: list[str]) -> int:
    try:
        bcc = load_bcc()
        bpf = bcc.BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
    except Unavailable as why:
        sock.sendall(json.dumps({"error": str(why)}).encode())
        return 1
    except Exception as error:
        lines = str(error).strip().splitlines()
        sock.sendall(json.dumps({"error": f"the BPF program does not load: {lines[-1] if lines else repr(error)}"}).encode())
        return 1
    reply = {"charge_problem": charge_probe_problem(bpf), "maps": list(MAPS)}
    socket.send_fds(sock, [json.dumps(reply).encode()], [bpf[name.encode()].map_fd for name in MAPS])
    sock.recv(1)  # returns when the collector closes its end, or dies
    bpf.cleanup()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        try:
            load_bcc()
        except Unavailable as why:
            print(why)
            return 1
        return 0
    with socket.socket(fileno=int(argv[0])) as sock:
        return _serve(sock, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
