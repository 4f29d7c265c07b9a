"""The chargeplay command line."""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, NoReturn, Optional

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 has click inside
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress as ProgressBar, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from chargeplay import __version__
from common.units import format_bytes, format_span, parse_size
from replay import policy
from traces.errors import UserError
from traces.manifest import losses
from traces.samples import DEFAULT_SAMPLE, sample_path

# Each command imports the heavy modules it needs (polars, pyarrow, numba, altair) when it runs:
# together they take a second to import here and minutes in an emulated VM (the kernel lab), and
# `collect` needs none of polars and altair.
if TYPE_CHECKING:
    from collect.collector import Progress

app = typer.Typer(
    help="Capture memcg kernel-memory charging, replay it under other charge policies, compare.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: an on/off flag shows no value, a choice its values
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # one-line messages stay one line
EXIT_USER_ERROR = 2
EXIT_BUG = 70  # EX_SOFTWARE: an internal error
EXIT_CLOSED_PIPE = 141  # as a shell reports a command that SIGPIPE ended


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Refused input (a UserError) and a file the operating system refused (an OSError naming
    the file: no space, no permission) end with one line and exit code 2. Anything else is a
    bug in chargeplay: it says so, shows the traceback and exits 70."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _error_line(str(error))
        except BrokenPipeError:  # the reader of stdout went away (`chargeplay policies --json | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nowhere
            raise typer.Exit(EXIT_CLOSED_PIPE)
        except OSError as error:
            if not error.filename:
                _bug()
            _error_line(f"{error.filename}: {error.strerror}")
        except Exception:
            _bug()

    return run


def _error_line(message: str) -> NoReturn:
    _print_error(message)
    raise typer.Exit(EXIT_USER_ERROR)


def _print_error(message: str) -> None:
    err.print(f"error: {' '.join(message.splitlines())}", markup=False, highlight=False)  # a path may hold newlines


def _bug() -> NoReturn:
    traceback.print_exc()
    err.print(f"chargeplay {__version__}: internal error, this is a bug in chargeplay; please report it with the traceback above",
              markup=False, highlight=False)
    raise typer.Exit(EXIT_BUG)


def _size(value: Optional[str], option: str) -> Optional[int]:
    from traces.manifest import MAX_BYTES

    if value is None or value == "max":
        return None
    try:
        size = parse_size(value)
    except ValueError as error:
        raise UserError(f"{option}: {error}") from None
    if size > MAX_BYTES:
        raise UserError(f"{option} {value}: more than 1P (1 PiB), the largest size a trace records; give a smaller one")
    return size


SIZES = "; K, M, G, T and P are KiB, MiB, GiB, TiB and PiB"
SIZE = "<size>"
RANGE = "<size|from:to:step>"


def _limit(value: Optional[str], option: str) -> Optional[int]:
    """A memory.max or memory.high to replay with: a size of at least a page, or `max` for no
    limit, as the kernel writes it; None: not given (the trace's own)."""
    from replay.ops import PAGE_SIZE, UNLIMITED

    if value == "max":
        return UNLIMITED * PAGE_SIZE
    size = _size(value, option)
    if size is not None and size < PAGE_SIZE:
        raise UserError(f"{option} {value}: a limit below one page ({PAGE_SIZE} bytes); give a size like 64M, or max for no limit")
    return size


BUFFER_HELP = ("trace buffer per CPU, KiB: larger loses fewer events in a storm, at that much memory "
               "(default: tracefs 32768 in each of its 3 instances; eBPF 16384 in its one ring, which counts in its RSS)")


def _buffer(kb: int | None) -> int | None:
    if kb is not None and kb < 4:
        raise UserError(f"--buffer-kb {kb}: a trace buffer needs at least one page per CPU; give 4 or more (or leave the default)")
    return kb


def _cpus(value: Optional[str]) -> Optional[set[int]]:
    """A CPU list as taskset takes it: 1, 0,2 or 2-3."""
    if value is None:
        return None
    cpus: set[int] = set()
    try:
        for part in value.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        cpus = set()
    if not cpus:  # a bad number or a range backwards
        raise UserError(f"--collector-cpus {value}: give CPU numbers and ranges, like 1 or 0,2-3")
    return cpus


def _budget(value: Optional[str]) -> Optional[int]:
    budget = _size(value, "--max-size")
    if budget == 0:
        raise UserError("--max-size 0: a flight recorder keeps at least its newest segment; give a size like 512M")
    return budget


@app.command()
@user_errors
def info(
    trace: Annotated[Optional[Path], typer.Argument(help=f"trace directory (default: the bundled {DEFAULT_SAMPLE} sample)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Describe a trace: the memcg's own counters, events by kind, kmem charged by gfp class, cache, call site and order."""
    from traces.reader import Trace
    from traces.summary import summarize

    summary = summarize(Trace.open(trace or sample_path(DEFAULT_SAMPLE)))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


KMEM_CAPTION = ("kmem-charged: charged to the memcg as kernel memory (__GFP_ACCOUNT, or a SLAB_ACCOUNT cache); user and "
                "page-cache pages (GFP_HIGHUSER_MOVABLE...) are charged too, when mapped or cached, not through __GFP_ACCOUNT: "
                "the memcg's counters above count them")
PIPED_WIDTH = 200  # columns when stdout is no terminal (rich would take 80 and cut names short)


def _stdout() -> Console:
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def _table(*headings: str, **options: Any) -> Table:
    """A table whose cells fold onto more lines where the terminal is narrow, never cut short."""
    table = Table(**options)
    for heading in headings:
        table.add_column(heading, overflow="fold")
    return table


def _cgroup_version(version: int | None) -> str:
    return f"cgroup v{version}" if version else "cgroup version not recorded"  # an imported trace's


def _print_summary(s: dict[str, Any]) -> None:
    out = _stdout()
    target = s["target"]
    out.print(f"[bold]{s['path']}[/]  status [bold]{s['status']}[/]" + (f" ({s['stop_reason']})" if s["stop_reason"] else ""), highlight=False)
    out.print(
        f"kernel {s['kernel'] or '-'}, backend {s['backend']}, started {s['start'] or '-'}, {s['duration_s']} s\n"
        f"memcg {target['cgroup_path'] or '-'} ({_cgroup_version(target['cgroup_version'])}), max {format_bytes(target['max'])}, "
        f"high {format_bytes(target['high'])}, command {' '.join(target['command'] or []) or '-'}\n"
        f"{s['events']:,} events, {s['lost_events']:,} lost, "
        f"{s['segments']} segments, {format_bytes(s['bytes_on_disk'])} on disk ({s['bytes_per_event']} bytes/event)",
        markup=False, highlight=False,
    )
    if s["losses"]:
        out.print(s["losses"], markup=False, highlight=False)
    if s["memcg"]:
        m = s["memcg"]
        max_events = "failcnt" if target["cgroup_version"] == 1 else "memory.events max"
        high = "" if m["high_events"] is None else f", memory.events high {m['high_events']:,}"
        out.print(f"the memcg's own counters at the end: peak {format_bytes(m['peak'])}, usage {format_bytes(m['usage'])}, "
                  f"{max_events} {m['max_events'] or 0:,}{high}, OOM kills {m['oom_kills'] or 0:,}; "
                  f"its tasks' memcg reclaims {m['reclaims']:,}", markup=False, highlight=False)
    if s["cpu_nodes"] and max(s["cpu_nodes"]) > 0:  # one line where there is more than one node
        cpus = {node: [cpu for cpu, n in enumerate(s["cpu_nodes"]) if n == node] for node in sorted(set(s["cpu_nodes"]))}
        out.print("NUMA: " + "; ".join(f"node {node} CPUs {','.join(map(str, c))}, {s['objects_by_node'].get(node, 0):,} charged "
                                       "slab objects prefer it" for node, c in cpus.items()), markup=False, highlight=False)
    contexts = ", ".join(f"{ctx or 'not recorded'} {count:,}" for ctx, count in s["contexts"].items())
    out.print(f"kmem charged: {format_bytes(s['kmem_bytes'])} in all, every charged allocation added up (frees not "
              f"subtracted); allocations by context: {contexts or '-'}", markup=False, highlight=False)
    if s["dropped"]:
        d = s["dropped"]
        out.print(f"flight recorder: dropped the oldest {d['segments']} segments ({d['events']:,} events, {format_bytes(d['bytes'])}; "
                  f"{d['first_ts_ns'] / 1e9:.1f} to {d['last_ts_ns'] / 1e9:.1f} s into the capture), the last at "
                  f"{d['last_dropped_wall']}", markup=False, highlight=False)
    kinds = _table("kind", "events", title="events by kind", title_justify="left")
    for kind, count in s["events_by_kind"].items():
        kinds.add_row(kind, f"{count:,}")
    out.print(kinds)
    classes = _table("gfp class", "allocations", "kmem-charged", "failed", "kmem bytes", title="allocations by gfp class",
                     title_justify="left", caption=KMEM_CAPTION, caption_justify="left")
    for row in s["gfp_classes"]:
        classes.add_row(row["gfp_class"], f"{row['allocations']:,}", f"{row['accounted']:,}", f"{row['failed']:,}", format_bytes(row["kmem_bytes"]))
    out.print(classes)
    for key, heading, title in (("top_caches", "cache", "slab caches"), ("top_call_sites", "call site", "call sites")):
        top = _table(heading, "allocations", "kmem bytes", title=f"the {title} that charged the most kmem", title_justify="left")
        for row in s[key]:
            name = row.get("cache") or row.get("symbol") or f"id {row['call_site']}"
            top.add_row(Text(name), f"{row['allocations']:,}",  # Text: a name from the trace is no markup
                        format_bytes(row["kmem_bytes"]))
        out.print(top)
    orders = _table("order", "page allocations", "kmem-charged", title="page allocations by order", title_justify="left")
    for row in s["page_orders"]:
        orders.add_row(str(row["order"]), f"{row['allocations']:,}", f"{row['kmem_charged']:,}")
    out.print(orders)


@app.command(context_settings={"allow_interspersed_args": False})
@user_errors
def collect(
    command: Annotated[Optional[list[str]], typer.Argument(help="workload to run in a new limited memcg (after --)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="trace directory to create")] = ...,
    memory_max: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memcg hard limit for the workload, e.g. 64M" + SIZES)] = None,
    memory_high: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memcg high limit (cgroup v2 only), e.g. 48M" + SIZES)] = None,
    duration: Annotated[Optional[float], typer.Option(help="stop after this many seconds")] = None,
    cgroup: Annotated[Optional[str], typer.Option(help="trace an existing cgroup instead of running a command")] = None,
    segment_events: Annotated[int, typer.Option(help="close a segment after this many events")] = 2_000_000,
    segment_seconds: Annotated[float, typer.Option(help="close a segment after this many seconds")] = 30.0,
    backend: Annotated[str, typer.Option(envvar="CHARGEPLAY_BACKEND", metavar="<tracefs|ebpf|auto>", help="tracefs, ebpf, or auto (eBPF when the BPF object loads (libbpf1, kernel BTF), else tracefs; says which)")] = "tracefs",
    bpf_output: Annotated[str, typer.Option(metavar="<ringbuf|perf|auto>", help="eBPF records through: ringbuf, perf (per-CPU perf buffers), or auto (ringbuf where the kernel has it)")] = "auto",
    keep_addresses: Annotated[bool, typer.Option(help="also store raw kernel addresses of objects and call sites (addresses/); they reveal the KASLR offset")] = False,
    all_allocations: Annotated[bool, typer.Option(help="record the slab allocations memcg does not charge too; by default only the accounted ones, all replay and analysis use")] = False,
    buffer_kb: Annotated[Optional[int], typer.Option(help=BUFFER_HELP)] = None,
    max_size: Annotated[Optional[str], typer.Option(metavar=SIZE, help="flight recorder: keep the newest closed segments within this size, e.g. 512M; the oldest are dropped (the manifest says which)")] = None,
    stop_on: Annotated[Optional[list[str]], typer.Option(help="end the capture when the target memcg's count rises: oom-kill, high:N (memory.events high, cgroup v2) or max:N (memory.events max; v1: memory.failcnt); repeatable")] = None,
    collector_cpus: Annotated[Optional[str], typer.Option(metavar="LIST", help="run the collector on these CPUs only, e.g. 1 or 2-3; the workload keeps the CPUs it was given. Before Linux 6.16 the collector's own charges on the workload's CPUs take its page stock, and a capture under memory.high throttles more than the workload alone")] = None,
) -> None:
    """Capture a workload's kernel-memory events (root): `chargeplay collect -o T --memory-max 64M -- CMD...`."""
    from collect.capture import capture
    from collect.collector import CaptureOptions
    from collect.flight_recorder import parse_trigger

    if bool(command) == bool(cgroup):
        raise UserError("give either a command after -- or --cgroup PATH with --duration")
    if cgroup and duration is None:
        raise UserError("--cgroup needs --duration S: an existing cgroup does not end by itself")
    options = CaptureOptions(
        output=output, command=command or None, cgroup_path=cgroup,
        memory_max=_size(memory_max, "--memory-max"), memory_high=_size(memory_high, "--memory-high"),
        duration=duration, segment_events=segment_events, segment_seconds=segment_seconds, backend=backend,
        bpf_output=bpf_output, keep_addresses=keep_addresses, all_allocations=all_allocations, max_size=_budget(max_size),
        buffer_kb=_buffer(buffer_kb),
        stop_on=[parse_trigger(text) for text in stop_on or []], collector_cpus=_cpus(collector_cpus),
    )
    if command:
        _check_command(command[0])
    with _live(transient=False) as live:
        manifest = capture(options, _capture_display(live), _say)
    lost = manifest["lost"]["total"]
    err.print(f"{output}: {manifest['events']:,} events, {lost:,} lost, {manifest['stop_reason']}", markup=False, highlight=False)
    if (said := losses(manifest)) is not None:
        err.print(said, markup=False, highlight=False)


@contextmanager
def _live(transient: bool) -> Iterator[Live]:
    """A status line on stderr that updates in place. Where stderr is not a terminal (a log,
    a pipe) rich prints its last state without a newline: one is added, so what follows
    (the summary, an error) starts on its own line."""
    live = Live(console=err, transient=transient, refresh_per_second=4)
    try:
        with live:
            yield live
    finally:
        if not err.is_terminal and live.renderable:  # it printed a status: end its line
            err.line()


def _say(note: str) -> None:
    err.print(note, markup=False, highlight=False)


def _capture_display(live: Live) -> Callable[[Progress], None]:
    """A capture's progress line: events/s, bytes written, lost events."""
    last = {"events": 0, "seconds": 0.0}

    def report(p: Progress) -> None:
        rate = (p.events - last["events"]) / max(p.seconds - last["seconds"], 1e-9)
        last.update(events=p.events, seconds=p.seconds)
        live.update(f"capturing {p.seconds:6.1f} s  {p.events:>12,} events  {rate:>10,.0f} events/s  "
                    f"{format_bytes(p.bytes_written):>10} written  {p.lost:,} lost")

    return report


@app.command(context_settings={"allow_interspersed_args": False})
@user_errors
def validate(
    command: Annotated[list[str], typer.Argument(help="workload to run in a new limited memcg (after --)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to create: trace, result, fidelity.json, report.html")] = ...,
    memory_max: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memcg hard limit for the workload, e.g. 28M" + SIZES)] = None,
    memory_high: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memcg high limit (cgroup v2 only), e.g. 24M" + SIZES)] = None,
    buffer_kb: Annotated[Optional[int], typer.Option(help=BUFFER_HELP + "; a trace that loses events certifies nothing")] = None,
) -> None:
    """Capture a workload under a limit (root), replay it under the running kernel's model, compare with what the kernel did."""
    from analyze import fidelity as fidelity_check
    from analyze.report import write_report
    from analyze.results import Result
    from chargeplay import validation

    _check_command(command[0])
    buffer_kb = _buffer(buffer_kb)
    with _live(transient=True) as live:

        def replaying(step: str, _done: int) -> None:
            live.update(f"replaying {step}")

        steps = validation.Steps(capturing=_capture_display(live), replaying=replaying, say=_say)
        result = validation.validate(output, command, _size(memory_max, "--memory-max"), _size(memory_high, "--memory-high"),
                                     buffer_kb, steps)
        live.update("writing the report")
        write_report(Result.open(output / "result"), output / "report.html", fidelity=result)
    table = _table("metric", "predicted", "observed", "relative error", "target",
                  title=f"fidelity: {result['model']}", title_justify="left")
    for row in result["rows"]:
        table.add_row(row["metric"], fidelity_check.format_value(row["predicted"], row["unit"]),
                      fidelity_check.format_value(row["observed"], row["unit"]),
                      fidelity_check.format_error(row), fidelity_check.format_target(row))
    _stdout().print(table)
    if not result["measured"]:
        _say(f"warning: {result['reason']}")
    oom = result["oom_kills_cross_check"]
    if oom["agree"] is False:
        _say(f"note: the memcg counted {oom['memcg']} OOM kills, the observer saw {oom['observer']} OOM victims")
    _say(f"{output}: trace, result, fidelity.json, report.html")


@app.command()
@user_errors
def policies(
    as_json: Annotated[bool, typer.Option("--json", help="print the policies and their knobs as JSON")] = False,
    policies_file: Annotated[Optional[Path], typer.Option("--policies", help="also list the policies of this TOML file")] = None,
) -> None:
    """List the charge policies: the 2015 thread's proposals and today's mainline."""
    chosen = [*policy.BUILTIN.values(), *(policy.load_toml(policies_file).values() if policies_file else [])]
    if as_json:
        print(json.dumps([{"name": p.name, "description": p.description, **p.knobs()} for p in chosen], indent=2))
        return
    table = _table("policy", "what it is", "knobs")
    for p in chosen:
        table.add_row(p.name, p.description, ", ".join(f"{k}={v}" for k, v in p.knobs().items()))
    _stdout().print(table)


def _chosen_policies(names: Optional[list[str]], policies_file: Optional[Path]) -> list[policy.Policy]:
    """The policies --policy names (default: all built-in and the --policies file's)."""
    available = {**policy.BUILTIN, **(policy.load_toml(policies_file) if policies_file else {})}
    missing = [name for name in names or [] if name not in available]
    if missing:
        raise UserError(f"no policy {missing[0]!r}; choose from {', '.join(available)}")
    return [available[name] for name in names] if names else list(available.values())


def _check_engine_and_clock(engine: str, clock: str) -> None:
    from replay.ops import CLOCK_SHARING
    from replay.run import ENGINES

    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if clock not in CLOCK_SHARING:
        raise UserError(f"--clock {clock!r}: choose one of {', '.join(CLOCK_SHARING)}")


def _steps_bar() -> ProgressBar:
    """A progress bar of steps, each described as it begins."""
    return ProgressBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)


POLICY_HELP = "a policy to run (repeatable; default: all built-in)"
POLICIES_FILE_HELP = "TOML file of extra policies (all are run unless --policy picks)"
OPEN_LOOP_HELP = "keep the trace's timeline: a task's stall does not delay its later events (default: closed loop, it does)"
CLOCK_HELP = "closed loop: which tasks wait for a stalled one: none (task, the default), its threads (process) or all (workload)"
CLOCK_CHOICES = "<task|process|workload>"  # replay.ops.CLOCK_SHARING
SPREAD_HELP = ("also replay every policy at 8 states of the per-CPU page stocks when the trace began, which it cannot show "
               "(8 times the work); summary.json, the table and the report give each figure's range over them")
RECLAIM_COST_HELP = ("take the reclaim cost (a call, a page) from this trace's memcg reclaim instead of the replayed trace's: "
                     "a capture of the same workload on the same host under a limit that made it reclaim, for a trace "
                     "that reclaims nothing itself (default: the trace's own, else 1 us a page)")
ENGINE_HELP = "fast (numba) or reference (plain Python)"
ENGINE_CHOICES = "<fast|reference>"  # replay.run.ENGINES


@app.command()
@user_errors
def replay(
    trace: Annotated[Path, typer.Argument(help="trace directory")],
    output: Annotated[Path, typer.Option("-o", "--output", help="result directory to create")] = ...,
    policy_names: Annotated[Optional[list[str]], typer.Option("--policy", metavar="<name>", help=POLICY_HELP)] = None,
    policies_file: Annotated[Optional[Path], typer.Option("--policies", help=POLICIES_FILE_HELP)] = None,
    memory_max: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memory.max to replay with, or max for none (default: the trace's)" + SIZES)] = None,
    memory_high: Annotated[Optional[str], typer.Option(metavar=SIZE, help="memory.high to replay with, or max for none (default: the trace's)" + SIZES)] = None,
    swap: Annotated[bool, typer.Option("--swap", help="let reclaim take anon pages")] = False,
    open_loop: Annotated[bool, typer.Option("--open-loop", help=OPEN_LOOP_HELP)] = False,
    clock: Annotated[str, typer.Option(metavar=CLOCK_CHOICES, help=CLOCK_HELP)] = "task",
    spread: Annotated[bool, typer.Option("--spread", help=SPREAD_HELP)] = False,
    reclaim_cost_from: Annotated[Optional[Path], typer.Option(metavar="TRACE", help=RECLAIM_COST_HELP)] = None,
    engine: Annotated[str, typer.Option(metavar=ENGINE_CHOICES, help=ENGINE_HELP)] = "fast",
) -> None:
    """Replay a trace under charge policies; write summary.json, timeseries.parquet, outcomes.parquet."""
    from replay import result_format, run
    from replay.ops import PAGE_SIZE, UNLIMITED
    from traces.atomic import check_new_output
    from traces.reader import Trace

    chosen = _chosen_policies(policy_names, policies_file)
    _check_engine_and_clock(engine, clock)
    check_new_output(output)
    source = Trace.open(trace)
    unseen = run.unseen_charges(source)
    if unseen:
        _say(f"warning: {unseen}")
    limits = run.limits_for(source, _limit(memory_max, "--memory-max"), _limit(memory_high, "--memory-high"), swap,
                            closed_loop=not open_loop, clock=clock, cost=run.cost_from(reclaim_cost_from))
    if limits.max_pages < limits.high_pages < UNLIMITED:
        _say(f"warning: memory.high {format_bytes(limits.high_pages * PAGE_SIZE)} is above memory.max "
             f"{format_bytes(limits.max_pages * PAGE_SIZE)}: usage never reaches it, so it never acts (as in the kernel)")
    with _steps_bar() as bar:
        steps = run.progress_steps(source, chosen, limits, spread)
        task = bar.add_task("reading the trace", total=steps)

        def step(name: str, done: int) -> None:
            bar.update(task, description=f"replaying {name}", completed=done)

        summary = run.replay(source, output, chosen, limits, run.ENGINES[engine], step, spread)
        bar.update(task, completed=steps, description="written")
    rows = _table("policy", "peak", "s above high", "failed", "forced", "reclaims", "stall ms", "run s", "fallbacks",
                  "other node", "failcnt", "OOM kills", title=f"{result_format.loop_description(summary['limits'])} loop")
    for name, s in summary["policies"].items():
        rows.add_row(name, format_bytes(s["peak_bytes"]), f"{s['seconds_above_high']:.3f}", f"{s['failed']:,}", f"{s['forced']:,}",
                     f"{sum(s['reclaim_calls'].values()):,}", f"{s['stall_ns_total'] / 1e6:.1f}", f"{s['run_seconds']:.3f}",
                     f"{s['fallbacks']:,}", f"{s['other_node']:,}", f"{s['failcnt']:,}", f"{s['oom_kills']:,}")
    _stdout().print(rows)
    if spread:
        _stdout().print(_spread_table(summary["spread"]))
    for note in (result_format.page_cache_reclaimed(summary), result_format.reclaim_cost_guessed(summary)):
        if note:
            _say(f"note: {note}")
    if (lost := losses(source.manifest)) is not None:
        err.print(f"warning: {lost} (summary.json: trace.lost)", markup=False, highlight=False)
    err.print(f"{output}: summary.json, timeseries.parquet, outcomes.parquet", markup=False, highlight=False)


def _spread_table(spread: dict) -> Table:
    """Each policy's figures over the stock phases: lowest to highest."""
    phases = spread["stock_phases"]
    rows = _table("policy", "run s", "stall ms", "high events", "s above high", "OOM kills",
                  title=f"over {len(phases)} stock phases ({min(phases)} to {max(phases)} pages): lowest to highest")
    for name, f in spread["policies"].items():
        rows.add_row(name, format_span(f["run_seconds"], "{:.3f}"), format_span([ns / 1e6 for ns in f["stall_ns_total"]], "{:,.1f}"),
                     format_span(f["high_events"], "{:,}"), format_span(f["seconds_above_high"], "{:.3f}"),
                     format_span(f["oom_kills"], "{:,}"))
    return rows


MAX_SWEEP_LIMITS = 200


def _limit_range(value: str, option: str) -> list[int]:
    """FROM:TO:STEP, sizes: FROM, FROM+STEP, ... up to TO."""
    from replay.ops import PAGE_SIZE

    parts = value.split(":")
    if len(parts) != 3:
        raise UserError(f"{option} {value}: a sweep takes FROM:TO:STEP, e.g. {option} 8M:64M:4M")
    first, last, step = (_size(part, option) for part in parts)
    if None in (first, last, step) or not PAGE_SIZE <= first <= last or step <= 0:
        raise UserError(f"{option} {value}: FROM must be at least 4K and at most TO, and STEP more than 0, e.g. 8M:64M:4M")
    count = (last - first) // step + 1
    if count > MAX_SWEEP_LIMITS:
        raise UserError(f"{option} {value}: {count:,} limits; a sweep takes at most {MAX_SWEEP_LIMITS}: give a larger STEP")
    return [first + n * step for n in range(count)]


@app.command()
@user_errors
def sweep(
    traces: Annotated[list[Path], typer.Argument(help="trace directories, or directories of them (several: a fleet)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to create: sweep.parquet, sweep.json, sweep.html")] = ...,
    memory_high: Annotated[Optional[str], typer.Option(metavar=RANGE, help="memory.high: FROM:TO:STEP to sweep (e.g. 4M:32M:2M), or one size (default: the trace's)" + SIZES)] = None,
    memory_max: Annotated[Optional[str], typer.Option(metavar=RANGE, help="memory.max: FROM:TO:STEP to sweep, or one size (default: the trace's)" + SIZES)] = None,
    criterion: Annotated[str, typer.Option(help="what the recommended limit must achieve: conditions on stretch (%), oom, "
                                           "failed, fallbacks (counts), above (s), stall (ms), joined by commas")] = "stretch<=5%,oom=0",
    policy_names: Annotated[Optional[list[str]], typer.Option("--policy", metavar="<name>", help=POLICY_HELP)] = None,
    policies_file: Annotated[Optional[Path], typer.Option("--policies", help=POLICIES_FILE_HELP)] = None,
    swap: Annotated[bool, typer.Option("--swap", help="let reclaim take anon pages")] = False,
    open_loop: Annotated[bool, typer.Option("--open-loop", help=OPEN_LOOP_HELP)] = False,
    clock: Annotated[str, typer.Option(metavar=CLOCK_CHOICES, help=CLOCK_HELP)] = "task",
    reclaim_cost_from: Annotated[Optional[Path], typer.Option(metavar="TRACE", help=RECLAIM_COST_HELP)] = None,
    engine: Annotated[str, typer.Option(metavar=ENGINE_CHOICES, help=ENGINE_HELP)] = "fast",
    executor: Annotated[str, typer.Option(help="where several traces' sweeps run: local (this process), dask (a local cluster "
                                          "of worker processes) or dask=ADDRESS (a scheduler's workers)")] = "local",
) -> None:
    """Replay traces under each memory.high (or memory.max) of a range; chart what each costs, name the smallest that meets a criterion."""
    import polars as pl

    from analyze.criterion import parse_criterion, recommend
    from analyze.fleet_page import build_fleet_page, fleet_recommendations, fleet_summary
    from analyze.sweep_page import AT_RECOMMENDED, LIMIT_NAMES, at_recommended, build_sweep_page, describe, write_sweep
    from chargeplay import fleet
    from replay.result_format import loop_description, reclaim_cost_description
    from replay.run import cost_from, limits_document
    from replay.sweep import OTHER_LIMIT, SweepSpec, sweep_path
    from traces.atomic import check_new_output
    from traces.reader import Trace

    given = {"memory_high": memory_high, "memory_max": memory_max}
    ranges = [name for name, value in given.items() if value and ":" in value]
    if len(ranges) != 1:
        raise UserError("sweep one limit: give --memory-high FROM:TO:STEP (or --memory-max FROM:TO:STEP), the other as one size or not at all")
    swept, fixed_name = ranges[0], OTHER_LIMIT[ranges[0]]
    values = _limit_range(given[swept], f"--{swept.replace('_', '-')}")
    fixed = _limit(given[fixed_name], f"--{fixed_name.replace('_', '-')}")
    conditions = parse_criterion(criterion)
    chosen = _chosen_policies(policy_names, policies_file)
    _check_engine_and_clock(engine, clock)
    fleet.parse_executor(executor)
    check_new_output(output)
    paths = fleet.trace_paths(traces)
    sources = {str(path): Trace.open(path) for path in paths}  # each refused here, in one line, if it is no whole trace
    spec = SweepSpec(chosen, swept, values, fixed, swap, not open_loop, clock, engine, cost_from(reclaim_cost_from))
    first = limits_document(spec.base(next(iter(sources.values()))))
    fixed_bytes = first["max_bytes" if fixed_name == "memory_max" else "high_bytes"]
    if fixed is not None or len(paths) == 1:
        fixed_text = (format_bytes(fixed_bytes) if fixed_bytes is not None else "unlimited") + ("" if fixed is not None else " (the trace's)")
    else:
        fixed_text = "each trace's own"
    lost = {path: said for path, source in sources.items() if (said := losses(source.manifest))}
    document = {
        "chargeplay_version": __version__, "swept": {"limit": swept, "values": values}, "fixed": f"{LIMIT_NAMES[fixed_name]} {fixed_text}",
        "replayed_with": f"{loop_description(first)} loop, swap {'on' if swap else 'off'}, {engine} engine, "
                         + (reclaim_cost_description(first) if reclaim_cost_from or len(paths) == 1 else "each trace's own reclaim cost"),
        "criterion": describe(conditions), "criterion_text": criterion,
    }
    if len(paths) == 1:
        with _steps_bar() as bar:
            task = bar.add_task(f"sweeping {LIMIT_NAMES[swept]}", total=len(values) * len(chosen))
            tables = [sweep_path(str(paths[0]), spec, lambda done: bar.update(task, completed=done))]
    else:
        with fleet.executor(executor) as pool, _steps_bar() as bar:
            task = bar.add_task(f"sweeping {len(paths)} traces ({executor})", total=len(paths))
            tables = pool.run(paths, spec, lambda path: bar.advance(task))
    table = pl.concat(tables)
    if len(paths) == 1:
        path = str(paths[0])
        recommended = recommend(table, conditions)
        document |= {"trace": path, "recommended": recommended, "lost": lost.get(path)}
        write_sweep(output, table, document, build_sweep_page(table, document))
        rows = _table("policy", f"recommended {LIMIT_NAMES[swept]}", *AT_RECOMMENDED,
                     title=f"the smallest {LIMIT_NAMES[swept]} swept where {criterion} holds (and at every larger one)")
        for name, cells in at_recommended(table, recommended).items():
            rows.add_row(name, *cells)
    else:
        recommended = fleet_recommendations(table, conditions)
        baselines = {path: policy.kernel_model_among(source.manifest["kernel"].get("release"), [p.name for p in chosen])
                     for path, source in sources.items()}
        summary = fleet_summary(recommended, baselines)
        document |= {"traces": list(sources), "executor": executor, "recommended": recommended, "baselines": baselines,
                     "fleet": summary, "lost": lost}
        write_sweep(output, table, document, build_fleet_page(document))
        rows = _table("policy", "traces met", "smallest", "median", "largest", "differ from baseline",
                     title=f"recommended {LIMIT_NAMES[swept]} across {len(paths)} traces ({criterion})")
        for name, s in summary.items():
            rows.add_row(name, f"{s['traces'] - s['none_in_range']} of {s['traces']}",
                         *(format_bytes(s[k]) if s[k] is not None else "-" for k in ("smallest", "median", "largest")),
                         f"{len(s['differs_from_baseline'])}")
    _stdout().print(rows)
    for path, said in lost.items():
        err.print(f"warning: {said}" if len(paths) == 1 else f"warning: {path}: {said}", markup=False, highlight=False)
    err.print(f"{output}: sweep.parquet, sweep.json, sweep.html", markup=False, highlight=False)


@app.command()
@user_errors
def report(
    results: Annotated[list[Path], typer.Argument(help="result directories `chargeplay replay -o` wrote (several: side by side)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write")] = ...,
    png: Annotated[Optional[Path], typer.Option(help="also write each chart as PNG into this directory")] = None,
    metrics: Annotated[Optional[Path], typer.Option("--json", help="also write the divergence metrics (several results: "
                                                    "the compared figures) as JSON")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="the policy the others are compared with (default: the model of "
                                                    "the trace's kernel, if replayed)")] = None,
    all_pairs: Annotated[bool, typer.Option("--all-pairs", help="compare every two policies, not each with the baseline")] = False,
) -> None:
    """Write one self-contained HTML report: where, when and for whom the policies part ways; several results side by side."""
    from analyze.compare_page import write_comparison
    from analyze.report import write_report
    from analyze.results import Result
    from traces.atomic import check_new_file, check_new_output, make_private_dir

    if len(results) > 1 and (baseline or all_pairs):
        raise UserError("--baseline and --all-pairs are for the report of one result; several are compared policy by policy")
    written = [output, *([metrics] if metrics else [])]
    for path in written:
        check_new_file(path)
    if png is not None:
        check_new_output(png)
    opened = [Result.open(result) for result in results]
    for path in written:
        make_private_dir(path.parent)
    with err.status("writing the report"):
        if len(opened) == 1:
            write_report(opened[0], output, png, metrics, baseline=baseline, all_pairs=all_pairs)
        else:
            write_comparison(opened, output, png, metrics)
    err.print(f"report: {output}", markup=False, highlight=False)


DEMO_LIMITS = {"memory_max": 16 << 20, "memory_high": 15 << 20}  # tight enough for file-storm to part the policies


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="directory for the replay result and the report")] = Path("chargeplay-demo"),
) -> None:
    """Replay the bundled file-storm trace under every built-in policy (with --spread) and write the report."""
    from analyze.report import write_report
    from analyze.results import Result
    from replay import run
    from traces.reader import Trace

    result_dir, page = output / "result", output / "report.html"
    if output.exists() and set(p.name for p in output.iterdir()) - {"result", "report.html"}:
        raise UserError(f"{output} holds other files; give chargeplay demo -o a new or earlier demo directory")
    shutil.rmtree(result_dir, ignore_errors=True)  # an earlier demo's result
    source = Trace.open(sample_path(DEFAULT_SAMPLE))
    limits = run.limits_for(source, DEMO_LIMITS["memory_max"], DEMO_LIMITS["memory_high"], swap=False)
    with err.status(f"replaying {DEFAULT_SAMPLE} under {len(policy.BUILTIN)} policies"):
        run.replay(source, result_dir, list(policy.BUILTIN.values()), limits, run.ENGINES["fast"], spread=True)
    with err.status("writing the report"):
        write_report(Result.open(result_dir), page)
    print(f"report: {page.resolve()}")


@app.command()
@user_errors
def synth(
    like: Annotated[str, typer.Option(help="a bundled sample's name or a trace directory to copy")] = DEFAULT_SAMPLE,
    events: Annotated[int, typer.Option(help="about how many events to write")] = 1_000_000,
    output: Annotated[Path, typer.Option("-o", "--output", help="trace directory to create")] = ...,
) -> None:
    """Make a large trace from a real one: its events laid end to end, shifted in time."""
    from traces.atomic import check_new_output
    from traces.reader import Trace
    from traces.synth import synthesize

    if events <= 0:
        raise UserError(f"--events {events}: give a positive number of events")
    check_new_output(output)
    source = Trace.open(like if Path(like).is_dir() else sample_path(like))
    with ProgressBar(TextColumn("writing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("synth", total=events)
        written = synthesize(source, output, events, lambda done: bar.update(task, completed=min(done, events)))
    err.print(f"{output}: {written:,} events", markup=False, highlight=False)


@app.command()
@user_errors
def scrub(
    trace: Annotated[Path, typer.Argument(help="trace directory")],
    output: Annotated[Path, typer.Option("-o", "--output", help="trace directory to create")] = ...,
    comm: Annotated[str, typer.Option(metavar="<hash|drop|keep>", help="task names: hash (keyed, key forgotten), drop, or keep")] = "hash",
    pid: Annotated[str, typer.Option(metavar="<renumber|keep>", help="pids: renumber (1, 2, ... by first appearance) or keep")] = "renumber",
) -> None:
    """Copy a trace for sharing: task names hashed or dropped, pids renumbered, command and cgroup paths removed."""
    from traces import scrub as scrubbing
    from traces.reader import Trace

    source = Trace.open(trace)
    scrubbing.check_request(source, output, comm, pid)
    with ProgressBar(TextColumn("scrubbing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("scrub", total=None)
        copied = scrubbing.scrub(source, output, comm, pid, lambda done, total: bar.update(task, completed=done, total=total))
    done = {"hash": "hashed", "drop": "dropped", "keep": "kept", "renumber": "renumbered"}
    err.print(f"{output}: {copied:,} events, task names {done[comm]}, pids {done[pid]}", markup=False, highlight=False)


@app.command("import")
@user_errors
def import_(
    file: Annotated[Path, typer.Argument(help="the text perf script or trace-cmd report printed, or the perf.data or trace.dat "
                                         "they read (with the tool installed)")],
    tool: Annotated[str, typer.Option("--from", metavar="<perf-script|trace-cmd>", help="the tool that wrote or reads FILE")] = ...,
    output: Annotated[Path, typer.Option("-o", "--output", help="trace directory to create")] = ...,
    memory_max: Annotated[Optional[str], typer.Option(metavar=SIZE, help="the memcg's hard limit to record (the tools record "
                                                      "none), e.g. 64M" + SIZES)] = None,
    memory_high: Annotated[Optional[str], typer.Option(metavar=SIZE, help="the memcg's high limit to record, e.g. 48M" + SIZES)] = None,
    memcg_id: Annotated[Optional[int], typer.Option(help="the workload's memcg (its cgroup directory's inode number): the stat "
                                                    "events of others are left out (default: the memcg most stat events name)")] = None,
) -> None:
    """Make a trace of what perf or trace-cmd recorded: kmem, memcg, vmscan, oom, syscall-exit and task events."""
    from collect.importer import import_trace
    from rich.progress import DownloadColumn

    # transient: a refusal found while reading stays the one line on stderr
    with ProgressBar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err,
                     transient=True) as bar:
        task = bar.add_task("reading", total=None)
        manifest = import_trace(file, tool, output, _size(memory_max, "--memory-max"), _size(memory_high, "--memory-high"), memcg_id,
                                lambda step, done, total: bar.update(task, description=step, completed=done, total=total), _say)
    lost = manifest["lost"]["total"]
    err.print(f"{output}: {manifest['events']:,} events, {lost:,} lost (as the tool says)", markup=False, highlight=False)


def _check_command(name: str) -> None:
    if shutil.which(name) is None:
        raise UserError(f"command not found: {name!r}; give a program on PATH or a path to one")


@app.callback(invoke_without_command=True)  # without a command: --version alone (no arguments at all show the help)
def _options(
    version: Annotated[bool, typer.Option("--version", help="print chargeplay's version and exit", is_eager=True)] = False,
) -> None:
    if version:
        print(f"chargeplay {__version__}")
        raise typer.Exit()


def main() -> NoReturn:
    try:
        code = app(prog_name="chargeplay", standalone_mode=False)
    except NoArgsIsHelpError as no_arguments:
        no_arguments.show()  # the help
        code = no_arguments.exit_code
    except UsageError as error:  # an unknown option, a missing or malformed value: one line, like refused input
        _print_error(f"{error.format_message()} (see {error.ctx.command_path if error.ctx else 'chargeplay'} --help)")
        code = EXIT_USER_ERROR
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
