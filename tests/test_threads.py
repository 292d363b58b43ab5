"""Thread pools sized to the CPUs a process may use: affinity, cgroup quota, $SYNTHMRI_THREADS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthmri import threads
from synthmri.threads import (LoadFollower, ThreadSettingError, apply_thread_limit, available_threads,
                              cgroup_cpu_quota, cpu_jiffies)


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


# --- following the load ----------------------------------------------------------------------
# /proc/stat as the kernel writes it (proc(5)): per CPU, ticks of user nice system idle iowait
# irq softirq steal guest guest_nice since boot. A 2-CPU process, ticks at 100 per second.

class _Machine:
    """Kernel CPU counters and a clock that the test advances by hand."""

    def __init__(self, path, cpus=2, extra_cpus=0):
        self.path, self.cpus, self.extra = path, cpus, extra_cpus
        self.busy = [0] * (cpus + extra_cpus)
        self.idle = [0] * (cpus + extra_cpus)
        self.now, self.own = 0.0, 0.0
        self.write()

    def write(self):
        rows = [f"cpu  {sum(self.busy)} 0 0 {sum(self.idle)} 0 0 0 0 0 0"]
        rows += [f"cpu{i} {b // 2} 0 {b - b // 2} {i_} 7 0 0 0 0 0" for i, (b, i_) in enumerate(zip(self.busy, self.idle))]
        self.path.write_text("\n".join(rows + ["intr 12345 0 0", "ctxt 999", "btime 1700000000"]) + "\n")

    def run(self, seconds, others_cpus, own_cpus=0.0, extra_busy=True):
        """`seconds` pass; other processes keep `others_cpus` CPUs busy and this one `own_cpus`."""
        ticks = int(seconds * 100)
        used = (others_cpus + own_cpus) / self.cpus
        for i in range(self.cpus):
            self.busy[i] += int(ticks * used)
            self.idle[i] += ticks - int(ticks * used)
        for i in range(self.cpus, self.cpus + self.extra):  # CPUs outside the affinity: always busy
            self.busy[i] += ticks if extra_busy else 0
            self.idle[i] += 0 if extra_busy else ticks
        self.now += seconds
        self.own += own_cpus * seconds
        self.write()


def _follower(machine, applied):
    follower = LoadFollower(2, set(range(machine.cpus)), interval=5.0, stat_path=machine.path,
                            own_seconds=lambda: machine.own, clock=lambda: machine.now, set_threads=applied.append)
    follower.ticks_per_second = 100
    return follower


def test_two_busy_processes_on_two_cpus_leave_one_thread_and_it_comes_back_when_they_stop(tmp_path):
    machine, applied = _Machine(tmp_path / "stat"), []
    follower = _follower(machine, applied)
    machine.run(5, others_cpus=2.0)
    assert follower.observe() == 2 and applied == []  # one look is not enough to give a thread up
    machine.run(5, others_cpus=1.3, own_cpus=0.7)  # under contention they get less than they ask
    assert follower.observe() == 1 and applied == [1]
    machine.run(5, others_cpus=1.3, own_cpus=0.7)
    assert follower.observe() == 1 and applied == [1]
    machine.run(5, others_cpus=0.0, own_cpus=2.0)  # its own work is not "other processes"
    assert follower.observe() == 2 and applied == [1, 2]  # threads come back at the first look


def test_a_blip_of_other_work_leaves_the_count_alone(tmp_path):
    machine, applied = _Machine(tmp_path / "stat"), []
    follower = _follower(machine, applied)
    for others in (0.0, 1.5, 0.1, 1.2, 0.0, 0.9, 0.2):  # every other look: a git, an import
        machine.run(5, others_cpus=others, own_cpus=1.8)
        assert follower.observe() == 2
    assert applied == []


def test_looks_at_most_once_per_interval_and_rounds_half_a_free_cpu_up(tmp_path):
    machine, applied = _Machine(tmp_path / "stat"), []
    follower = _follower(machine, applied)
    machine.run(4.9, others_cpus=2.0)
    assert follower.observe() == 2 and applied == []  # 4.9 s: too soon to look
    machine.run(0.1, others_cpus=2.0)
    assert follower.observe() == 2  # the first look asking for fewer
    machine.run(5, others_cpus=2.0)
    assert follower.observe() == 1
    machine.run(5, others_cpus=0.5, own_cpus=1.0)  # 1.5 free: a second thread still helps
    assert follower.observe() == 2
    for _ in range(2):
        machine.run(5, others_cpus=0.7)
        follower.observe()
    assert follower.threads == 1
    assert applied == [1, 2, 1]


def test_only_the_cpus_it_may_run_on_count(tmp_path):
    # Two more CPUs, busy all the time, outside the process's affinity: they leave its two free.
    machine, applied = _Machine(tmp_path / "stat", cpus=2, extra_cpus=2), []
    follower = _follower(machine, applied)
    machine.run(5, others_cpus=0.0, own_cpus=2.0)
    assert follower.observe() == 2 and applied == []
    assert cpu_jiffies({2, 3}, machine.path) == (1000, 1000 + 2 * 7)  # iowait (7 per CPU) counts as idle


def test_the_cli_follows_the_load_only_where_nothing_fixed_the_count(tmp_path, monkeypatch):
    no_quota = tmp_path / "none"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SYNTHMRI_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_POOLS_SET_HERE", {})
    apply_thread_limit(cgroup_root=no_quota)
    assert threads._follower is not None and threads._follower.ceiling == threads.affinity_cpus()
    apply_thread_limit(cgroup_root=no_quota)  # the pools it set itself last time do not fix the count
    assert threads._follower is not None
    apply_thread_limit({"SYNTHMRI_THREADS": "1"}, no_quota)
    assert threads._follower is None
    apply_thread_limit({"OMP_NUM_THREADS": "1"}, no_quota)  # the user's own pool size
    assert threads._follower is None
    apply_thread_limit({}, _cgroup_v2(tmp_path / "cg", "200000 100000"))  # the kernel enforces a quota
    assert threads._follower is None


def test_every_stage_progress_report_lets_the_follower_look(monkeypatch):
    from synthmri.monitoring import StageMonitor

    looks = []

    class Follower:
        def observe(self):
            looks.append(1)
            return 1

    monkeypatch.setattr(threads, "_follower", Follower())
    with StageMonitor("train-generator", unit="iterations", total=3, show_bar=False) as monitor:
        for step in range(1, 4):
            monitor.progress(step)
    assert len(looks) == 3
