"""Thread pools sized to the CPUs a process may use: affinity, cgroup quota, $SYNTHMRI_THREADS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthmri.threads import ThreadSettingError, apply_thread_limit, available_threads, cgroup_cpu_quota


def _cgroup_v2(root, text):
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _cgroup_v1(root, quota, period):
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_a_pod_with_a_4_cpu_quota_on_a_64_core_node_gets_4_threads(tmp_path):
    # What the kernel writes for a container limited to 4 CPUs: 400 ms of every 100 ms.
    root = _cgroup_v2(tmp_path / "cg", "400000 100000\n")
    assert cgroup_cpu_quota(root) == 4.0
    assert available_threads({}, root, affinity=64) == 4


def test_a_fractional_quota_rounds_up_and_never_below_one(tmp_path):
    assert available_threads({}, _cgroup_v2(tmp_path / "a", "150000 100000"), affinity=64) == 2
    assert available_threads({}, _cgroup_v2(tmp_path / "b", "10000 100000"), affinity=64) == 1


def test_cgroup_v1_and_unlimited_quotas(tmp_path):
    assert available_threads({}, _cgroup_v1(tmp_path / "v1", 300000, 100000), affinity=16) == 3
    assert cgroup_cpu_quota(_cgroup_v1(tmp_path / "free", -1, 100000)) is None
    assert cgroup_cpu_quota(_cgroup_v2(tmp_path / "max", "max 100000")) is None
    assert available_threads({}, tmp_path / "none", affinity=6) == 6  # no cgroup files: affinity


def test_affinity_and_the_setting_can_only_lower_the_count(tmp_path):
    root = _cgroup_v2(tmp_path / "cg", "800000 100000")
    assert available_threads({}, root, affinity=2) == 2  # taskset to 2 CPUs inside an 8-CPU quota
    assert available_threads({"SYNTHMRI_THREADS": "3"}, root, affinity=64) == 3
    assert available_threads({"SYNTHMRI_THREADS": "32"}, root, affinity=64) == 8
    with pytest.raises(ThreadSettingError, match=r"\$SYNTHMRI_THREADS must be a whole number of at least 1, got '0'"):
        available_threads({"SYNTHMRI_THREADS": "0"}, root, affinity=4)


def test_pool_variables_are_set_unless_the_user_chose(tmp_path):
    root = _cgroup_v2(tmp_path / "cg", "200000 100000")
    environ = {"MKL_NUM_THREADS": "1"}
    assert apply_thread_limit(environ, root) <= 2
    assert environ["OMP_NUM_THREADS"] == environ["OPENBLAS_NUM_THREADS"] == str(available_threads({}, root))
    assert environ["MKL_NUM_THREADS"] == "1"


def test_the_cli_sizes_torch_before_it_starts(tmp_path):
    # A fresh interpreter, as a container starts: torch must come up with the limited pool.
    code = ("import os, sys; os.environ['SYNTHMRI_THREADS'] = '1'; from synthmri.threads import apply_thread_limit; "
            "apply_thread_limit(); import torch; print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items() if not k.endswith("_NUM_THREADS")})
    assert out.stdout.strip() == "1"
