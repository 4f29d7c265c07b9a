"""memcg stat events from kprobes, on kernels that lack the memcg tracepoints (before 6.14).

memcg:mod_memcg_lruvec_state, memcg:mod_memcg_state and memcg:count_memcg_events arrived in
Linux 6.14. They sit in __mod_memcg_lruvec_state, __mod_memcg_state and __count_memcg_events,
which the older kernels have too (6.1, 6.12). Where a tracepoint is missing and the kernel has
kprobes, a dynamic kprobe event on its function records what the tracepoint would:

  id    the memcg's cgroup id (kernfs node id: the cgroup directory's inode number, as the
        tracepoint's cgroup_id(memcg->css.cgroup)), fetched by dereferencing struct members
        whose offsets come from the running kernel's BTF;
  item  the stat item (enum node_stat_item, memcg_stat_item or vm_event_item);
  val   the function's own argument, in the item's own unit: collect.decode converts it to
        pages as the tracepoint does (collect.decode.memcg_state_val_in_pages).

The events are named after the function, in a group of this process's own (chargeplay_PID),
so a capture never touches another tool's probes and a dead collector's are found by name
(collect.cleanup). kprobe events are global: they are removed at the end of the capture, by
the guardian if the collector is killed, and by the next capture if both are.
"""
from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from pathlib import Path

from collect.event_format import EventFormat, read_event_format
from collect.kernel_tables import VMLINUX_BTF, read_btf
from collect.tracefs import TracefsError, write_setting

GROUP_PREFIX = "chargeplay_"  # kprobe group names allow letters, digits and "_" only
OWNED_GROUP = re.compile(rf"^{GROUP_PREFIX}(\d+)$")
PROBE_IP = "__probe_ip"  # the field every kprobe event's records start with: how the decoder tells them


@dataclass(frozen=True)
class StatFunction:
    """A kernel function that updates memcg stats, and the tracepoint later kernels put in it."""

    name: str
    tracepoint: str  # memcg:<tracepoint>
    kind: str  # the trace kind its events become (collect.decode.TRACEPOINT_KINDS)
    first_arg: str  # "struct lruvec *" or "struct mem_cgroup *": how the memcg is reached
    val_type: str  # the kprobe fetch type of the third argument
    # C types each argument may have (BTF's spelling): the fetch args assume these sizes.
    args: tuple[tuple[str, ...], ...]


STAT_FUNCTIONS = (
    StatFunction("__mod_memcg_lruvec_state", "mod_memcg_lruvec_state", "memcg_lruvec_state", "struct lruvec *", "s32",
                 (("struct lruvec *",), ("enum node_stat_item",), ("int",))),
    StatFunction("__mod_memcg_state", "mod_memcg_state", "memcg_state", "struct mem_cgroup *", "s32",
                 (("struct mem_cgroup *",), ("int", "enum memcg_stat_item"), ("int",))),  # an int idx until 6.11
    StatFunction("__count_memcg_events", "count_memcg_events", "memcg_event", "struct mem_cgroup *", "u64",
                 (("struct mem_cgroup *",), ("enum vm_event_item",), ("long unsigned int",))),
)
# The struct members between a function's first argument and the memcg's id.
MEMBERS = {
    "mem_cgroup_per_node": ("lruvec", "memcg"),  # the lruvec is embedded; memcg points back
    "mem_cgroup": ("css",),
    "cgroup_subsys_state": ("cgroup",),
    "cgroup": ("kn",),
    "kernfs_node": ("id",),
}
# mm/memcontrol.c's memcg_page_state_unit (6.18): the items not counted in pages, and their unit
# in bytes. The tracepoints give val in pages (memcg_state_val_in_pages); the functions do not.
STAT_UNITS = {"MEMCG_PERCPU_B": 1, "MEMCG_ZSWAP_B": 1, "NR_SLAB_RECLAIMABLE_B": 1, "NR_SLAB_UNRECLAIMABLE_B": 1,
              "NR_KERNEL_STACK_KB": 1024}
VAL_IN_PAGES = "val, in the item's unit, to pages as memcg_state_val_in_pages does for the tracepoint"


@dataclass
class ProbeFacts:
    """What decides the probes on a kernel: read from the running one (read_probe_facts), or
    recorded from the lab's kernels (lab/facts.py writes this as facts.json's memcg_probes)."""

    kprobe_events: bool  # tracefs has kprobe_events (CONFIG_KPROBE_EVENTS)
    traceable: list[str]  # the STAT_FUNCTIONS listed in available_filter_functions
    function_args: dict[str, list[str]]  # each STAT_FUNCTION BTF has -> its arguments' C types
    members: dict[str, dict[str, int]]  # MEMBERS' byte offsets, from BTF ({} if one is missing)
    members_missing: str = ""  # what BTF lacks of MEMBERS


def read_probe_facts(tracefs: Path, btf_path: Path = VMLINUX_BTF) -> ProbeFacts:
    """The running kernel's (its BTF is read only if it has kprobes: 0.4 s here, more under TCG)."""
    if not kprobe_events_file(tracefs).exists():
        return ProbeFacts(kprobe_events=False, traceable=[], function_args={}, members={})
    btf = read_btf(btf_path)
    names = {f.name for f in STAT_FUNCTIONS}
    function_args = {}
    for name in sorted(names):
        try:
            function_args[name] = btf.function_args(name)
        except KeyError:
            pass  # BTF lists the functions the compiler kept; this one was inlined everywhere
    try:
        members, missing = {s: btf.member_offsets(s, m) for s, m in MEMBERS.items()}, ""
    except KeyError as error:
        members, missing = {}, str(error.args[0])
    return ProbeFacts(kprobe_events_file(tracefs).exists(), sorted(traceable_functions(tracefs, names)),
                      function_args, members, missing)


def _at(offset: int, address: str) -> str:
    """A kprobe fetch arg that reads memory at `address` + `offset` (tracefs kprobetrace.rst)."""
    return f"{'+' if offset >= 0 else '-'}{abs(offset)}({address})"


def memcg_id_fetcharg(first_arg: str, members: dict[str, dict[str, int]]) -> str:
    """`lruvec` or `memcg` (the first argument) -> memcg->css.cgroup->kn->id, as a u64.
    A lruvec sits inside its mem_cgroup_per_node, whose `memcg` points back (container_of)."""
    memcg = "$arg1"
    if first_arg == "struct lruvec *":
        per_node = members["mem_cgroup_per_node"]
        memcg = _at(per_node["memcg"] - per_node["lruvec"], memcg)
    cgroup = _at(members["mem_cgroup"]["css"] + members["cgroup_subsys_state"]["cgroup"], memcg)
    kn = _at(members["cgroup"]["kn"], cgroup)
    return _at(members["kernfs_node"]["id"], kn) + ":u64"


def probe_definition(group: str, function: StatFunction, members: dict[str, dict[str, int]]) -> str:
    """The kprobe_events line of one function's event: fields named as the tracepoint's."""
    return (f"p:{group}/{function.name} {function.name} id={memcg_id_fetcharg(function.first_arg, members)} "
            f"item=$arg2:s32 val=$arg3:{function.val_type}")


def why_not_probed(function: StatFunction, facts: ProbeFacts) -> str | None:
    """Why `function` cannot stand in for its tracepoint on this kernel, or None if it can."""
    if function.name not in facts.traceable:
        return f"{function.name} is not traceable on this kernel (inlined, or not in available_filter_functions)"
    args = facts.function_args.get(function.name)
    if args is None:
        return f"BTF has no function {function.name}"
    if len(args) != len(function.args) or any(arg not in allowed for arg, allowed in zip(args, function.args)):
        return f"{function.name} takes ({', '.join(args)}) on this kernel, not ({', '.join(a[0] for a in function.args)})"
    return None


@dataclass
class ProbePlan:
    """What the memcg stat events come from on this kernel: kprobe definitions for the
    tracepoints it lacks, why each other one is not probed, and, when none is, why not."""

    definitions: dict[str, str]  # function name -> kprobe_events line
    not_probed: dict[str, str]  # memcg:tracepoint -> why no kprobe stands in for it
    reason: str = ""  # why there are no definitions at all

    def notes(self) -> list[str]:
        """What to say at the capture's start: which kprobes stand in, and why others do not
        (one line per reason). Nothing where the kernel has the tracepoints."""
        lines = [f"memcg stat events: kprobes on {', '.join(self.definitions)} stand in for the memcg tracepoints "
                 "this kernel lacks (Linux 6.14+)"] if self.definitions else []
        by_reason: dict[str, list[str]] = {}
        for tracepoint, why in self.not_probed.items():
            by_reason.setdefault(why, []).append(tracepoint)
        return lines + [f"{', '.join(tracepoints)}: {why}" for why, tracepoints in by_reason.items()]


NOT_NEEDED = "not needed: this kernel has the memcg tracepoints (Linux 6.14+)"


def plan_probes(group: str, missing: list[str], facts: ProbeFacts | None) -> ProbePlan:
    """The kprobes that stand in for the `missing` memcg tracepoints (names without "memcg:").
    `facts` are needed only when something is missing (reading BTF takes a while under TCG)."""
    wanted = [f for f in STAT_FUNCTIONS if f.tracepoint in missing]
    if not wanted:
        return ProbePlan({}, {}, NOT_NEEDED)
    why = ("no kprobe: kprobes are not built into this kernel (no kprobe_events in tracefs)" if not facts.kprobe_events
           else f"no kprobe: {facts.members_missing}" if facts.members_missing else None)
    if why:
        return ProbePlan({}, {f"memcg:{f.tracepoint}": why for f in wanted}, why)
    definitions, not_probed = {}, {}
    for function in wanted:
        if (why := why_not_probed(function, facts)) is None:
            definitions[function.name] = probe_definition(group, function, facts.members)
        else:
            not_probed[f"memcg:{function.tracepoint}"] = f"no kprobe: {why}"
    return ProbePlan(definitions, not_probed, "" if definitions else "no function could be probed")


def traceable_functions(tracefs: Path, names: set[str]) -> set[str]:
    """Which of `names` the kernel can probe: listed in available_filter_functions (whole names:
    a ".isra.0" or ".part.0" clone has other arguments). Empty without the file."""
    try:
        with open(tracefs / "available_filter_functions") as listing:
            return {name for line in listing if (name := line.split(" ", 1)[0].strip()) in names}
    except OSError:
        return set()


def stat_units(enums: dict[str, dict[str, int]]) -> dict[int, int]:
    """Item value -> unit in bytes, for this kernel's items that are not counted in pages."""
    values = {**enums.get("node_stat_item", {}), **enums.get("memcg_stat_item", {})}
    return {values[name]: unit for name, unit in STAT_UNITS.items() if name in values}


# ---------------------------------------------------------------------------
# tracefs's kprobe_events
# ---------------------------------------------------------------------------

def kprobe_events_file(tracefs: Path) -> Path:
    return tracefs / "kprobe_events"


def events_of_group(tracefs: Path, group: str) -> list[str]:
    """The names of the kprobe events in `group` ("p:GROUP/EVENT SYMBOL ARGS..." lines)."""
    try:
        lines = kprobe_events_file(tracefs).read_text().splitlines()
    except OSError:
        return []
    return [line.split()[0].split("/", 1)[1] for line in lines if line.split()[0].split(":", 1)[-1].split("/")[0] == group]


def owned_groups(tracefs: Path) -> dict[str, int]:
    """chargeplay's kprobe groups there now -> the pid of the collector that made each."""
    try:
        lines = kprobe_events_file(tracefs).read_text().splitlines()
    except OSError:
        return {}
    groups = {line.split()[0].split(":", 1)[-1].split("/")[0] for line in lines if line.strip()}
    return {group: int(match.group(1)) for group in groups if (match := OWNED_GROUP.match(group))}


def remove_group(tracefs: Path, group: str, timeout: float = 5.0) -> None:
    """Remove every kprobe event of `group`, one by one ("-:GROUP/EVENT": writing the file with
    O_TRUNC would remove everyone's). An event still enabled somewhere cannot go (EBUSY): it is
    tried again for `timeout` seconds, while a dying reader lets go of its instance."""
    deadline = time.monotonic() + timeout
    for event in events_of_group(tracefs, group):
        while True:
            try:
                write_setting(kprobe_events_file(tracefs), f"-:{group}/{event}\n", append=True)
                break
            except OSError as err:
                if err.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise TracefsError(f"cannot remove kprobe event {group}/{event}: {err.strerror}; disable it where it is "
                                   f"enabled and write '-:{group}/{event}' to {kprobe_events_file(tracefs)}") from None


class MemcgProbes:
    """The kprobe events of one capture: created from a ProbePlan, removed by remove()."""

    def __init__(self, tracefs: Path, group: str, plan: ProbePlan) -> None:
        self.tracefs, self.group, self.plan = tracefs, group, plan
        self.created: list[str] = []

    def create(self) -> dict[int, tuple[str, EventFormat]]:
        """Add the plan's events (disabled: an instance enables them with its filter); their
        record layouts by event id, as collect.decode.load_formats gives the tracepoints'. One
        the kernel refuses moves from the plan's definitions to its not_probed, with why."""
        by_name = {f.name: f for f in STAT_FUNCTIONS}
        formats = {}
        for function, definition in list(self.plan.definitions.items()):
            try:
                write_setting(kprobe_events_file(self.tracefs), definition + "\n", append=True)
            except OSError as err:
                del self.plan.definitions[function]
                self.plan.not_probed[f"memcg:{by_name[function].tracepoint}"] = (
                    f"no kprobe: the kernel refused {definition!r} ({err.strerror}; {self.tracefs / 'error_log'} says why)")
                continue
            self.created.append(function)
            fmt = read_event_format(self.tracefs / "events", self.group, function)
            formats[fmt.id] = (by_name[function].kind, fmt)
        return formats

    def remove(self) -> None:
        """Remove this capture's events (after the instances that enabled them are gone)."""
        if self.created:
            remove_group(self.tracefs, self.group)
            self.created = []
