"""libbpf over ctypes: the dozen calls that open a compiled BPF object, set it up for the running
kernel, load it (libbpf relocates its CO-RE field accesses against the kernel's BTF) and attach
its programs. libbpf is Debian's libbpf1 (libbpf.so.1, 1.1 or later): a 360 KB library with no
compiler, already on most hosts (iproute2 depends on it).

libbpf's log goes nowhere by default here: it is kept, and an error message quotes the
line that says what failed (the verifier's full log is long, and no user's business).
"""
from __future__ import annotations

import ctypes as ct
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

_log: deque[str] = deque(maxlen=400)
_libc = ct.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]

# libbpf_print_fn_t: (enum libbpf_print_level, const char *format, va_list). On x86-64 a
# va_list parameter is a pointer, which vsnprintf takes as it is.
_PRINT = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)


@_PRINT
def _keep(level: int, fmt: bytes, args: int) -> int:
    line = ct.create_string_buffer(512)
    _libc.vsnprintf(line, len(line), fmt, args)
    _log.append(line.value.decode(errors="replace").strip())
    return 0


_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "libbpf_set_print": (ct.c_void_p, [_PRINT]),
    "bpf_object__open_file": (ct.c_void_p, [ct.c_char_p, ct.c_void_p]),
    "bpf_object__load": (ct.c_int, [ct.c_void_p]),
    "bpf_object__close": (None, [ct.c_void_p]),
    "bpf_object__find_map_by_name": (ct.c_void_p, [ct.c_void_p, ct.c_char_p]),
    "bpf_object__find_program_by_name": (ct.c_void_p, [ct.c_void_p, ct.c_char_p]),
    "bpf_object__next_program": (ct.c_void_p, [ct.c_void_p, ct.c_void_p]),
    "bpf_program__name": (ct.c_char_p, [ct.c_void_p]),
    "bpf_program__section_name": (ct.c_char_p, [ct.c_void_p]),
    "bpf_program__set_autoload": (ct.c_int, [ct.c_void_p, ct.c_bool]),
    "bpf_program__attach": (ct.c_void_p, [ct.c_void_p]),
    "bpf_program__attach_kprobe": (ct.c_void_p, [ct.c_void_p, ct.c_bool, ct.c_char_p]),
    "bpf_link__destroy": (ct.c_int, [ct.c_void_p]),
    "bpf_map__set_max_entries": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
    "bpf_map__set_initial_value": (ct.c_int, [ct.c_void_p, ct.c_void_p, ct.c_size_t]),
    "bpf_map__fd": (ct.c_int, [ct.c_void_p]),
    "bpf_program__fd": (ct.c_int, [ct.c_void_p]),
    "bpf_obj_get_info_by_fd": (ct.c_int, [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]),
}
# struct bpf_prog_info (uapi; members are only ever appended): its size up to and including
# recursion_misses (Linux 5.12+), and that member's offset.
PROG_INFO_BYTES, RECURSION_MISSES_AT = 216, 208
_lib: ct.CDLL | None = None


class LibbpfError(OSError):
    """A libbpf call failed: `what` was asked, `why` it failed (the error and libbpf's reason)."""

    def __init__(self, errno: int, what: str, why: str) -> None:
        super().__init__(errno, f"{what}: {why}")
        self.what, self.why = what, why


def libbpf() -> ct.CDLL:
    """libbpf.so.1, typed and logging into this module (OSError if it is not installed)."""
    global _lib
    if _lib is None:
        lib = ct.CDLL("libbpf.so.1", use_errno=True)
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        lib.libbpf_set_print(_keep)
        _lib = lib
    return _lib


def _failed(what: str, error: int) -> LibbpfError:
    """The error for a failed call: libbpf's first line saying why, if it logged one."""
    reasons = [line.removeprefix("libbpf: ") for line in _log if any(word in line for word in ("failed", "error", "not found", "invalid"))]
    _log.clear()
    return LibbpfError(error, what, os.strerror(error) + (f" ({reasons[0]})" if reasons else ""))


class BpfObject:
    """A BPF object file: opened, then set up (max entries, read-only data, which programs
    load), loaded, attached program by program; closing it detaches and unloads everything
    (as does the death of this process: the kernel drops what its file descriptors held)."""

    def __init__(self, path: Path) -> None:
        self.lib = libbpf()
        _log.clear()
        self.obj = self.lib.bpf_object__open_file(str(path).encode(), None)
        if not self.obj:
            raise _failed(f"opening {path}", ct.get_errno())
        self.links: list[int] = []

    def _find(self, kind: str, name: str) -> int:
        found = getattr(self.lib, f"bpf_object__find_{kind}_by_name")(self.obj, name.encode())
        if not found:
            raise KeyError(f"the BPF object has no {kind} {name}")
        return found

    def _programs(self) -> Iterator[int]:
        program = None
        while program := self.lib.bpf_object__next_program(self.obj, program):
            yield program

    def program_names(self) -> list[str]:
        return [self.lib.bpf_program__name(program).decode() for program in self._programs()]

    def program_sections(self) -> dict[str, str]:
        """Each program's section, which says where attach() attaches it (raw_tp/EVENT, ...)."""
        return {self.lib.bpf_program__name(program).decode(): self.lib.bpf_program__section_name(program).decode()
                for program in self._programs()}

    def set_max_entries(self, map_name: str, entries: int) -> None:
        if (error := self.lib.bpf_map__set_max_entries(self._find("map", map_name), entries)) < 0:
            raise _failed(f"sizing map {map_name}", -error)

    def set_rodata(self, data: bytes) -> None:
        """The object's read-only data (its `const volatile` globals), before load."""
        if (error := self.lib.bpf_map__set_initial_value(self._find("map", ".rodata"), data, len(data))) < 0:
            raise _failed(f"setting .rodata ({len(data)} bytes)", -error)

    def set_autoload(self, program: str, load: bool) -> None:
        self.lib.bpf_program__set_autoload(self._find("program", program), load)

    def load(self) -> None:
        _log.clear()
        if (error := self.lib.bpf_object__load(self.obj)) < 0:
            raise _failed("loading the BPF programs", -error)

    def _keep_link(self, link: int | None, what: str) -> None:
        if not link:
            raise _failed(what, ct.get_errno())
        self.links.append(link)

    def attach(self, program: str) -> None:
        """Attach where the program's section says (raw_tp/EVENT, tracepoint/SYSTEM/EVENT)."""
        _log.clear()
        self._keep_link(self.lib.bpf_program__attach(self._find("program", program)), f"attaching {program}")

    def attach_kprobe(self, program: str, function: str, retprobe: bool) -> None:
        _log.clear()
        link = self.lib.bpf_program__attach_kprobe(self._find("program", program), retprobe, function.encode())
        self._keep_link(link, f"{'kretprobe' if retprobe else 'kprobe'} on {function}")

    def detach(self, count: int) -> None:
        """Detach the last `count` attached programs."""
        for _ in range(count):
            self.lib.bpf_link__destroy(self.links.pop())

    def recursion_misses(self) -> dict[str, int]:
        """Per loaded program, how often the kernel did not run it: it was called while a BPF
        program ran on that CPU already (itself, for a raw_tp program; any kprobe or
        tracepoint program, for one of those), as when an interrupt comes during one."""
        misses = {}
        for program in self._programs():
            fd = self.lib.bpf_program__fd(program)
            info, size = ct.create_string_buffer(PROG_INFO_BYTES), ct.c_uint32(PROG_INFO_BYTES)
            if fd >= 0 and self.lib.bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) == 0 and size.value >= PROG_INFO_BYTES:
                misses[self.lib.bpf_program__name(program).decode()] = int.from_bytes(info.raw[RECURSION_MISSES_AT:PROG_INFO_BYTES], "little")
        return misses

    def map_fd(self, name: str) -> int:
        """A file descriptor of the map's own, for the caller to close."""
        return os.dup(self.lib.bpf_map__fd(self._find("map", name)))

    def close(self) -> None:
        """Detach and unload (once; later calls do nothing)."""
        if self.obj:
            self.detach(len(self.links))
            self.lib.bpf_object__close(self.obj)
            self.obj = None
