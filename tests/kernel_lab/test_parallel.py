"""Both kernels side by side (`--kernel all`, as `make lab` runs the live tests): a kernel that
fails is named at the end with its own last lines, where a log's tail shows them."""
from __future__ import annotations

import pytest

from labtools import lab

pytestmark = pytest.mark.lab


def test_the_kernel_that_failed_is_named_last_with_its_own_last_lines(vng):
    fails_on_6_1 = 'echo "command on $(uname -r)"; case "$(uname -r)" in 6.1.*) exit 5;; esac'
    result = lab("run", "--kernel", "all", "--", "sh", "-c", fails_on_6_1, timeout=10 * 60)
    assert result.returncode == 5, result.stderr[-2000:]
    header, *tail = result.stderr.split("lab: FAILED on ")[-1].splitlines()
    assert result.stderr.count("lab: FAILED on ") == 1 and header == "6.1 (exit code 5); its last lines:"
    assert tail and all(line.startswith("[6.1] ") for line in tail), tail
    assert any(line.startswith("[6.1] command on 6.1.") for line in tail), tail
    assert "exit code 5 after" in tail[-1]
    assert any(line.startswith("[6.12] command on 6.12.") for line in result.stdout.splitlines())
