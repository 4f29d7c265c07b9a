"""Bad input: one line naming the problem and what to do, exit code 2, no traceback."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import CHARGEPLAY, assert_user_error, chargeplay
from traces.samples import DEFAULT_SAMPLE, sample_path


@pytest.fixture
def sample_copy(tmp_path):
    copy = tmp_path / "trace"
    shutil.copytree(sample_path(DEFAULT_SAMPLE), copy)
    return copy


def test_size_that_is_not_a_size(tmp_path):
    assert_user_error(chargeplay("collect", "-o", str(tmp_path / "t"), "--memory-max", "64Q", "--", "true"), "64Q", "--memory-max")


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
