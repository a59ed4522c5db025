"""A killed run gives its pool slot back: the kill-and-rerun sequence through the dagster CLI, in a temporary
DAGSTER_HOME with config/dagster.yaml (the ``gpu`` pool holds one slot)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).parent / "dagster"


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "config" / "dagster.yaml", home / "dagster.yaml")
    return home


def _env(dagster_home: Path, tmp_path: Path, hold_s: float) -> dict:
    return dict(os.environ, DAGSTER_HOME=str(dagster_home), ASTFORGE_HOME=str(tmp_path / "astforge"),
                ASTFORGE_TEST_MARKER=str(tmp_path / "step.pid"), ASTFORGE_TEST_HOLD_S=str(hold_s))


def _start(env: dict) -> subprocess.Popen:
    # Its own session: killing the process group kills the CLI and its step processes, as Ctrl-C twice or the
    # OOM killer would.
    return subprocess.Popen([str(DAGSTER), "asset", "materialize", "-m", "tests.gpu_pool_defs",
                             "--select", "hold_gpu_slot"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"the step never started within {timeout_s}s")
        time.sleep(0.2)


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: a zombie would still answer kill(pid, 0)


def _runs_oldest_first(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(order_by="create_timestamp", ascending=True)]


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float) -> str:
    """The output of ``proc`` up to the first line holding ``text``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # each log line arrives well within the deadline's margin
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"no line with {text!r} within {timeout_s}s:\n{''.join(lines)[-4000:]}")


def _finish(proc: subprocess.Popen, timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the re-run did not finish within {timeout_s}s:\n{out[-4000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_a_killed_run_does_not_hold_the_gpu_pool(dagster_home, tmp_path):
    marker = tmp_path / "step.pid"
    first = _start(_env(dagster_home, tmp_path, hold_s=600))
    _wait_for(marker, first, timeout_s=60)
    _kill_group(first)
    marker.unlink()

    out = _finish(_start(_env(dagster_home, tmp_path, hold_s=0)), timeout_s=60)
    assert marker.exists()
    assert "was STARTED but its processes" in out and "freed its slots (1 in pool 'gpu')" in out, out[-4000:]
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    killed, rerun = _runs_oldest_first(instance)
    assert (killed.status, rerun.status) == (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS)
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots


@pytest.mark.slow
def test_a_run_killed_while_another_waits_frees_the_slot_and_the_wait_is_explained(dagster_home, tmp_path):
    config = dagster_home / "dagster.yaml"
    config.write_text(config.read_text().replace("poll_interval_seconds: 30", "poll_interval_seconds: 2"))
    marker = tmp_path / "step.pid"
    first = _start(_env(dagster_home, tmp_path, hold_s=600))
    _wait_for(marker, first, timeout_s=60)
    marker.unlink()
    second = _start(_env(dagster_home, tmp_path, hold_s=0))
    waiting = _read_until(second, "waits for a slot in pool 'gpu'", timeout_s=60)
    holder, _ = _runs_oldest_first(dg.DagsterInstance.from_config(str(dagster_home)))
    assert f"(limit 1; held by run {holder.run_id} (STARTED) step hold_gpu_slot)" in waiting
    assert " - INFO - " in waiting.splitlines()[-1]
    _kill_group(first)
    out = _finish(second, timeout_s=60)
    assert marker.exists()
    assert f"run {holder.run_id} (__ASSET_JOB) was STARTED but its processes" in out, out[-4000:]
