"""validate's observer, live: it follows the workload's task tree from its root pid and counts
its reclaim calls, pages and OOM victims apart from the trace being judged, and what its
buffers dropped is counted, never lost unnoticed. Skips where root or tracefs is missing."""
from __future__ import annotations

import json
import subprocess
import sys

from analyze.fidelity import uncertified
from collect.observer import BUFFER_KB, Observation, Observer
from conftest import chargeplay, trace_reclaims
from traces.reader import Trace

# 16 MiB of page cache for reclaim to take back, then a child that touches anonymous memory
# until the memcg's OOM killer stops it (no swap: nothing else can); the parent, which holds
# little, writes how its child ended (the signal that killed it, or -1) to argv[1].
CACHE_THEN_OOM = r"""
import os, sys
with open(sys.argv[2], "wb") as cache:
    cache.write(os.urandom(16 << 20))
child = os.fork()
if child == 0:
    chunks = []
    while True:
        chunks.append(b"x" * (1 << 20))
_, status = os.waitpid(child, 0)
open(sys.argv[1], "w").write(str(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1))
"""
# argv[1] children forked as fast as they can be, each exiting at once, then reaped.
FORK_STORM = r"""
import os, sys
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        os._exit(0)
for _ in range(int(sys.argv[1])):
    os.wait()
"""


def test_the_observer_counts_the_reclaim_calls_pages_and_oom_victim_of_the_workloads_tasks(memcg_controller, tmp_path):
    """Checked against what it never reads: the trace's own reclaim_end events (a second tracefs
    instance, whose pid filter the kernel keeps), the memcg's failcnt (v1) or memory.events max
    (v2), which count every charge at the limit, each reclaim call following at least one, and
    its oom_kill counter; and the workload's own word that its child died of SIGKILL."""
    ended = tmp_path / "ended"
    out = tmp_path / "v"
    result = chargeplay("validate", "-o", str(out), "--memory-max", "28M", "--", sys.executable, "-c", CACHE_THEN_OOM,
                        str(ended), str(tmp_path / "cache"), timeout=300)
    assert result.returncode == 0, result.stderr
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert Trace.open(out / "trace").manifest["lost"]["total"] == 0
    assert fidelity["measured"] and fidelity["lost_events"] == {"trace": 0, "observer": 0}
    observer = fidelity["observer"]
    assert observer["unmeasured"] == {}  # 6.18 has all four tracepoints
    assert observer["tasks"] == 2  # the parent and its child
    reclaims = trace_reclaims(out / "trace")
    assert observer["reclaim_calls"] == reclaims["calls"] > 0
    assert observer["pages_reclaimed"] == reclaims["pages"] > 0  # the page cache went first
    rows = {row["metric"]: row for row in fidelity["rows"]}
    at_limit = rows["charge failures (failcnt)" if fidelity["cgroup_version"] == 1 else "memory.events max"]["observed"]
    assert observer["reclaim_calls"] <= at_limit
    assert ended.read_text() == "9"  # SIGKILL: the OOM killer's
    assert observer["oom_victims"] == rows["OOM kills"]["observed"] == 1  # the memcg's oom_kill counter
    assert fidelity["oom_kills_cross_check"] == {"memcg": 1, "observer": 1, "agree": True}


def observe_fork_storm(children: int, buffer_kb: int) -> Observation:
    with Observer(buffer_kb) as observer:
        storm = subprocess.Popen([sys.executable, "-c", FORK_STORM, str(children)])
        observer.follow(storm.pid)
        storm.wait()
    return observer.observation()


def test_the_observer_follows_every_task_of_a_fork_storm_and_counts_what_a_small_buffer_dropped(tracefs):
    """10,000 children forked in a burst, every fork on the machine recorded: with its own
    buffer (whose 4 MiB a CPU hold the whole storm's 0.6 MB of fork events even undrained) the
    observer follows each, and the root, losing nothing; with 4 KiB per CPU the kernel drops
    fork events (overwrite is off: here 2,900 to 4,600 of them) and the observer says how many,
    at least the tasks it could not follow, and such an observation certifies nothing."""
    children = 10_000
    whole = observe_fork_storm(children, BUFFER_KB)
    assert (whole.tasks, whole.lost) == (children + 1, 0)
    starved = observe_fork_storm(children, 4)
    assert starved.lost > 0 and starved.tasks + starved.lost >= children + 1
    assert f"{starved.lost:,} by the observer: nothing is certified" in uncertified(0, starved)

