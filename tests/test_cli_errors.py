"""Bad input: one line naming the problem and what to do, exit code 2, no traceback; an internal
error: said to be a bug, with its traceback, exit code 70."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import typer

from chargeplay.cli import user_errors
from common.units import parse_size
from common.version import __version__
from conftest import CHARGEPLAY, assert_user_error, chargeplay
from test_report import tiny_trace
from traces.errors import UserError
from traces.samples import DEFAULT_SAMPLE, sample_path


@pytest.fixture
def sample_copy(tmp_path):
    copy = tmp_path / "trace"
    shutil.copytree(sample_path(DEFAULT_SAMPLE), copy)
    return copy


def test_size_that_is_not_a_size(tmp_path):
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), "--memory-max", "64Q", "--", "true"), "64Q", "--memory-max")


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--stop-on", "oom", ["--stop-on oom", "oom-kill, high:N or max:N"]),
    ("--stop-on", "high:0", ["--stop-on high:0", "N > 0"]),
    ("--max-size", "0", ["--max-size 0", "512M"]),
    ("--max-size", "lots", ["--max-size", "lots"]),
])
def test_flight_recorder_option_not_understood(tmp_path, option, value, words):
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), option, value, "--", "true"), *words)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("command", ["collect", "validate"])
def test_a_trace_buffer_smaller_than_a_page(tmp_path, command):
    assert_user_error(chargeplay(command, "-o", str(tmp_path / "t"), "--buffer-kb", "2", "--", "true"), "--buffer-kb 2", "4 or more")
    assert not (tmp_path / "t").exists()


def test_version():
    shown = chargeplay("--version")
    assert shown.returncode == 0 and shown.stdout == f"chargeplay {__version__}\n"


@pytest.mark.parametrize("value", ["0", "1", "4095"])
def test_a_limit_below_a_page(tmp_path, value):
    assert_user_error(chargeplay("replay", str(sample_path(DEFAULT_SAMPLE)), "-o", str(tmp_path / "r"), "--memory-max", value),
                      f"--memory-max {value}", "below one page", "max for no limit")
    assert not (tmp_path / "r").exists()


def test_max_removes_the_traces_limit_and_a_high_above_max_is_said(tmp_path):
    """The tiny trace of the report tests records memory.high 150 pages and memory.max 1000."""
    tiny_trace(tmp_path / "trace")
    limits = {}
    for name, options in (("own", []), ("no-high", ["--memory-high", "max"]), ("no-max", ["--memory-max", "max"])):
        replayed = chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / name), "--policy", "mainline-6.18", *options)
        assert replayed.returncode == 0 and "warning: memory.high" not in replayed.stderr, replayed.stderr
        limits[name] = json.loads((tmp_path / name / "summary.json").read_text())["limits"]
    assert (limits["own"]["high_bytes"], limits["own"]["max_bytes"]) == (150 * 4096, 1000 * 4096)
    assert (limits["no-high"]["high_bytes"], limits["no-high"]["max_bytes"]) == (None, 1000 * 4096)
    assert (limits["no-max"]["high_bytes"], limits["no-max"]["max_bytes"]) == (150 * 4096, None)
    above = chargeplay("replay", str(tmp_path / "trace"), "-o", str(tmp_path / "above"), "--policy", "mainline-6.18",
                       "--memory-high", "20M", "--memory-max", "16M")
    assert above.returncode == 0 and "warning: memory.high 20.0 MiB is above memory.max 16.0 MiB" in above.stderr


def test_command_not_found(tmp_path):
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), "--", "no-such-command-xyz"), "no-such-command-xyz")


def test_cgroup_path_missing(tracefs, tmp_path):
    result = chargeplay("collect", "-o", str(tmp_path / "t"), "--cgroup", "/no/such/cgroup", "--duration", "1")
    assert_user_error(result, "/no/such/cgroup")


def test_output_directory_in_use(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "precious").write_text("keep me")
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), "--", "true"), "not an empty directory")
    assert (tmp_path / "t" / "precious").read_text() == "keep me"


def test_not_root(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run as another user")
    tmp_path.chmod(0o777)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CHARGEPLAY, "collect", "-o", str(tmp_path / "t"), "--", "true"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert_user_error(result, "root")


def test_no_tracefs(tracefs, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to hide tracefs in a private mount namespace")
    # In a private mount namespace, an empty read-only /sys/kernel has no tracefs to find or mount.
    script = 'mount -t tmpfs -o ro none /sys/kernel && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", *CHARGEPLAY, "collect", "-o", str(tmp_path / "t"), "--", "true"],
        capture_output=True, text=True, timeout=60,
    )
    assert_user_error(result, "tracefs")


def test_ebpf_backend_without_its_built_object(tracefs, tmp_path):
    """A checkout before `make bpf`, or an install made without the object, says to build it."""
    script = (f"import pathlib, collect.bpf_loader; collect.bpf_loader.BPF_OBJECT = pathlib.Path({str(tmp_path / 'kmem.bpf.o')!r}); "
              "from chargeplay.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", script, "collect", "-o", str(tmp_path / "t"), "--backend", "ebpf", "--", "true"],
                            capture_output=True, text=True, timeout=120)
    assert_user_error(result, "eBPF backend unavailable", "kmem.bpf.o is not built: run `make bpf`")


def test_info_on_a_missing_directory(tmp_path):
    assert_user_error(chargeplay("info", str(tmp_path / "nothing")), "no such trace directory")


def test_info_on_a_directory_without_manifest(tmp_path):
    assert_user_error(chargeplay("info", str(tmp_path)), "manifest.json")


def test_info_on_a_damaged_manifest(sample_copy):
    (sample_copy / "manifest.json").write_text("{not json")
    assert_user_error(chargeplay("info", str(sample_copy)), "not valid JSON")


def test_info_on_another_schema_version(sample_copy):
    manifest = json.loads((sample_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (sample_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(chargeplay("info", str(sample_copy)), "schema version 99")


def test_info_on_a_corrupted_segment(sample_copy):
    segment = next((sample_copy / "events").glob("part-*.parquet"))
    segment.write_bytes(segment.read_bytes()[:1000])
    assert_user_error(chargeplay("info", str(sample_copy)), segment.name)


def test_replay_choices_the_model_does_not_have(tmp_path):
    trace = str(sample_path(DEFAULT_SAMPLE))
    for option, value in (("--clock", "thread"), ("--policy", "nope"), ("--engine", "turbo")):
        result = chargeplay("replay", trace, "-o", str(tmp_path / "r"), option, value)
        assert_user_error(result, f"{value!r}")
        assert not (tmp_path / "r").exists()


def test_an_internal_error_is_a_bug_with_its_traceback_not_a_user_error(capsys):
    def broken() -> None:
        int("x")  # a ValueError that no input check raised on purpose

    with pytest.raises(typer.Exit) as exit:
        user_errors(broken)()
    stderr = capsys.readouterr().err
    assert exit.value.exit_code == 70
    assert "Traceback" in stderr and "ValueError: invalid literal for int() with base 10: 'x'" in stderr
    assert stderr.strip().splitlines()[-1].endswith("internal error, this is a bug in chargeplay; please report it with the traceback above")
    assert "error: " not in stderr


def test_a_refusal_raised_on_purpose_is_one_line(capsys):
    def refuses() -> None:
        raise UserError("--memory-max: give a size\nlike 64M")  # a path or value may hold a newline

    with pytest.raises(typer.Exit) as exit:
        user_errors(refuses)()
    assert exit.value.exit_code == 2
    assert capsys.readouterr().err == "error: --memory-max: give a size like 64M\n"


def test_a_file_the_system_refuses_is_one_line_naming_it(tmp_path, capsys):
    def writes_into_a_directory() -> None:
        (tmp_path / "report.html").mkdir()
        open(tmp_path / "report.html", "w")

    with pytest.raises(typer.Exit) as exit:
        user_errors(writes_into_a_directory)()
    assert exit.value.exit_code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'report.html'}: Is a directory\n"


def test_report_writes_only_new_files_and_makes_their_directories(sample_copy, tmp_path):
    """One rule for every -o: nothing already there is overwritten, missing parents are made; and
    a --png that cannot be written is refused before the page is."""
    replayed = chargeplay("replay", str(sample_copy), "-o", str(tmp_path / "r"), "--policy", "mainline-6.18", "--memory-high", "20M")
    assert replayed.returncode == 0, replayed.stderr
    existing = tmp_path / "old.html"
    existing.write_text("kept")
    assert_user_error(chargeplay("report", str(tmp_path / "r"), "-o", str(existing)), f"{existing} exists", "nothing is overwritten")
    assert existing.read_text() == "kept"
    (tmp_path / "dir").mkdir()
    assert_user_error(chargeplay("report", str(tmp_path / "r"), "-o", str(tmp_path / "dir")), "exists")
    (tmp_path / "png-file").write_text("")
    assert_user_error(chargeplay("report", str(tmp_path / "r"), "-o", str(tmp_path / "new.html"), "--png", str(tmp_path / "png-file")),
                      "png-file")
    assert not (tmp_path / "new.html").exists()
    made = chargeplay("report", str(tmp_path / "r"), "-o", str(tmp_path / "a" / "b" / "r.html"), "--json", str(tmp_path / "c" / "m.json"))
    assert made.returncode == 0 and (tmp_path / "a" / "b" / "r.html").exists() and (tmp_path / "c" / "m.json").exists()



def test_tables_are_whole_when_piped(tmp_path):
    """Through a pipe (as here) a table is as wide as it needs: no policy name or heading cut
    short; the replay table has the memcg's failcnt and OOM kills."""
    shown = chargeplay("replay", str(sample_path(DEFAULT_SAMPLE)), "-o", str(tmp_path / "r"), "--memory-high", "15M")
    assert shown.returncode == 0, shown.stderr
    cells = {cell.strip() for line in shown.stdout.splitlines() for cell in re.split("[│┃]", line)}
    assert "…" not in shown.stdout
    assert {"fail-nowait-above-high", "nowait-slab-charge", "failcnt", "OOM kills", "s above high"} <= cells


def options_shown(*command: str) -> dict[str, str]:
    """The options a command's help lists, each with the value placeholder it shows ("" for none)."""
    shown = chargeplay(*command, "--help", env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    return dict(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)(?: (<[^>]*>))?", shown.stdout, re.MULTILINE))


def test_help_shows_no_value_for_a_flag_and_the_choices_of_a_choice():
    from collect.capture import BACKENDS, BPF_OUTPUTS
    from replay.ops import CLOCK_SHARING
    from replay.run import ENGINES
    from traces.scrub import COMM_CHOICES, PID_CHOICES

    choices = lambda placeholder: set(placeholder.strip("<>").split("|"))  # noqa: E731
    replay = options_shown("replay")
    assert replay["--swap"] == replay["--open-loop"] == replay["--help"] == ""
    assert choices(replay["--engine"]) == set(ENGINES) and choices(replay["--clock"]) == set(CLOCK_SHARING)
    assert replay["--memory-max"] == replay["--memory-high"] == "<size>" and replay["--policy"] == "<name>"
    collect = options_shown("collect")
    assert collect["--keep-addresses"] == collect["--all-allocations"] == ""
    assert choices(collect["--backend"]) == set(BACKENDS) and choices(collect["--bpf-output"]) == set(BPF_OUTPUTS)
    scrub = options_shown("scrub")
    assert choices(scrub["--comm"]) == set(COMM_CHOICES) and choices(scrub["--pid"]) == set(PID_CHOICES)
    assert options_shown("sweep")["--memory-high"] == "<size|from:to:step>"
    assert "PiB" in chargeplay("replay", "--help").stdout


@pytest.mark.parametrize(("args", "words"), [
    (["replay", "x"], ["Missing option '-o'", "chargeplay replay --help"]),
    (["replay", "x", "-o", "y", "--no-such-option"], ["No such option: --no-such-option", "chargeplay replay --help"]),
    (["no-such-command"], ["No such command 'no-such-command'", "chargeplay --help"]),
])
def test_a_command_line_not_understood_is_one_line_too(args, words):
    assert_user_error(chargeplay(*args), *words)


def test_sizes_go_up_to_one_pib(tmp_path):
    assert parse_size("1P") == 1 << 50 and parse_size("2PiB") == 2 << 50
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), "--memory-max", "2P", "--", "true"),
                      "--memory-max 2P", "1 PiB")
    assert not (tmp_path / "t").exists()


def test_shell_completion_is_offered():
    # --show-completion prints the script for the shell it runs under (its parent process): bash
    # here, which runs it as a child (`; true`: not exec'd in bash's place)
    script = subprocess.run(["bash", "-c", f"{shlex.join(CHARGEPLAY)} --show-completion; true"], capture_output=True,
                            text=True, timeout=60)
    assert "_CHARGEPLAY_COMPLETE=complete_bash" in script.stdout, script.stderr
    words = chargeplay(env={**os.environ, "_CHARGEPLAY_COMPLETE": "complete_bash", "COMP_WORDS": "chargeplay rep",
                            "COMP_CWORD": "1"})
    assert words.stdout.split() == ["replay", "report"]
