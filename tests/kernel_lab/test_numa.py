"""A lab guest of two NUMA nodes (python -m lab run --numa 2), as the SLAB NUMA fallback sample
was captured on: the nodes and CPUs the guest has, and the manifest's map of them."""
from __future__ import annotations

import json
import re

import pytest

from labtools import lab

pytestmark = pytest.mark.lab

CPU_NODES = "import json; from traces.manifest import cpu_nodes; print('cpu_nodes', json.dumps(cpu_nodes()))"


def test_a_two_node_guest_puts_one_cpu_on_each_node_and_the_manifest_says_so(vng):
    # 2 CPUs and 2 GiB shared evenly: CPU 0 on node 0, CPU 1 on node 1, and about 1 GiB each.
    result = lab("run", "--kernel", "6.12", "--numa", "2", "--", "sh", "-c",
                 'for n in /sys/devices/system/node/node*; do echo "$(basename $n) $(cat $n/cpulist)"; done; '
                 'grep -h MemTotal /sys/devices/system/node/node*/meminfo; python -c "$0"', CPU_NODES, timeout=10 * 60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.findall(r"^(node\d+) (\S+)$", result.stdout, re.M) == [("node0", "0"), ("node1", "1")]
    totals = [int(kib) for kib in re.findall(r"MemTotal:\s+(\d+) kB", result.stdout)]
    assert len(totals) == 2 and all(800 << 10 < kib <= 1 << 20 for kib in totals), totals
    assert json.loads(re.search(r"^cpu_nodes (.*)$", result.stdout, re.M).group(1)) == [0, 1]


def test_more_nodes_than_cpus_is_refused_before_anything_boots(vng):
    result = lab("run", "--kernel", "6.12", "--numa", "3", "--", "true", timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "error: --numa 3: the guest has 2 CPUs, so 1 to 2 NUMA nodes"
