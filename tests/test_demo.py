"""`make demo`'s driver: jobs run in order against a real Dagster instance and the summary is one screen of tables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]


def test_data_only_demo_prints_a_line_per_step_and_logs_everything_to_its_file(astforge_home, tmp_path):
    """`make demo` as a user runs it: a separate process whose screen is a pipe."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "config" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), ASTFORGE_HOME=str(astforge_home),
               ASTFORGE_SOURCE_PYTHON=f"dir:{FIXTURES / 'python'}")
    log_file = tmp_path / "demo.log"
    proc = subprocess.run([sys.executable, "demo.py", "--groups", "autocomplete", "--data-only", "--log-file",
                           str(log_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert proc.stderr == ""  # warnings and Dagster's log went to the file
    lines = out.splitlines()
    assert lines[0] == f"[astforge] a line per step; the full log: {log_file}"
    assert "[astforge] ast_data_job [python]" in lines and "[astforge] autocomplete_data_job [python]" in lines
    step = next(line for line in lines if "✓ fim_samples" in line)
    assert int(step.split("training_rows ")[1].replace(",", "")) > 0
    assert "DEBUG" not in out and "STEP_START" not in out
    assert len(lines) < 60  # a screen
    rows = out[out.index("Datasets (rows per slice)"):]
    header = rows.splitlines()[1].split()
    assert header == ["python"]  # one column per slice present
    units = next(line for line in rows.splitlines() if line.strip().startswith("code_units"))
    assert int(units.split()[1]) > 0
    # not a terminal: every step line stays, and each job ends with its line
    assert any(line.startswith("[astforge] ✓ autocomplete_data_job [python]") and "fim_samples: units" in line
               for line in lines)
    assert "autocomplete_job" not in out  # --data-only trains nothing
    assert f"the full log: {log_file}" in lines[-1]
    log = log_file.read_text()
    assert "STEP_START" in log and "DEBUG" in log and "fim_samples" in log  # every event, DEBUG included
    # each job in a process of its own (its memory returns to the OS when it ends), with its peak on its line
    pids = set(re.findall(r"Executing steps in process \(pid: (\d+)\)", log))
    assert len(pids) == 2, pids
    assert all(re.search(r"\d+s +\d+\.\d GiB", line) for line in lines if line.startswith("[astforge] ✓"))
    assert re.search(r"peak memory \d+\.\d GiB \(largest job: \w+", out)


def test_pivot_puts_each_slice_in_its_column(capsys):
    from demo import print_pivot

    print_pivot("T", [("a", "java", 3), ("a", "python", 1), ("b", "all", 0.5)])
    lines = capsys.readouterr().out.strip("\n").splitlines()
    assert lines[0] == "T:" and lines[1].split() == ["python", "java", "all"]
    assert lines[2].split() == ["a", "1", "3"] and lines[2].index("3") > lines[2].index("1")
    assert lines[3].split() == ["b", "0.5000"] and lines[3].rindex("0.5000") > lines[2].rindex("3")


def test_a_job_process_ends_when_the_demo_does(astforge_home, tmp_path):
    """A job's process never trains on after the demo that started it is gone (killed, not only Ctrl-C)."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "config" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), ASTFORGE_HOME=str(astforge_home),
               ASTFORGE_SOURCE_PYTHON=f"dir:{FIXTURES / 'python'}")
    start_and_leave = ("import os, subprocess, sys; print(subprocess.Popen([sys.executable, 'demo.py', "
                       "'--execute-job', "
                       "'--job', 'ast_data_job', '--run-id', 'orphan-run', '--partition', 'python', '--parent', "
                       "str(os.getpid())]).pid)")
    parent = subprocess.run([sys.executable, "-c", start_and_leave], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    child = int(parent.stdout)
    deadline = time.monotonic() + 300
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    assert instance.get_run_by_id("orphan-run") is None  # it stopped before running anything


def test_the_datasets_trained_on_python_only_are_made_and_leak_checked_on_the_other_slices(astforge_home, tmp_path):
    """The groups that train on the python slice still make their datasets on every other slice the demo runs, with
    their blocking split-leak checks (one run per slice over the selected assets of several groups)."""
    from demo import ASSET_SELECTION_JOB, SLICE_DATASETS

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "config" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), ASTFORGE_HOME=str(astforge_home),
               ASTFORGE_SOURCE_JAVASCRIPT=f"dir:{FIXTURES / 'javascript'}")
    proc = subprocess.run([sys.executable, "demo.py", "--groups", "ast_first", "srl", "--slices", "javascript",
                           "--data-only", "--log-file", str(tmp_path / "demo.log")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[astforge] data and split checks [javascript]" in proc.stdout.splitlines()
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    for asset in SLICE_DATASETS["srl"]:
        key = dg.AssetKey(asset)
        assert instance.get_latest_materialization_event(key) is not None, asset
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, "no_split_leak")])
        assert [c.status.value for c in check.values()] == ["SUCCEEDED"], (asset, check)
    assert ASSET_SELECTION_JOB == defs_asset_job_name()


def defs_asset_job_name() -> str:
    from definitions import defs

    return defs.resolve_implicit_global_asset_job_def().name
