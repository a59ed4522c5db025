"""`make demo`'s driver: jobs run in order against a real Dagster instance and the summary is one screen of tables."""

from __future__ import annotations

import shutil

from tests.conftest import FIXTURES


def test_data_only_demo_runs_the_autocomplete_data_and_summarizes(astforge_home, tmp_path, monkeypatch, capsys):
    import demo

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(demo.__file__.replace("demo.py", "config/dagster.yaml"), dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("ASTFORGE_SOURCE_PYTHON", f"dir:{FIXTURES / 'python'}")
    assert demo.main(["--groups", "autocomplete", "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[astforge] ast_data_job [python] ok" in out and "[astforge] autocomplete_data_job [python] ok" in out
    assert "peak memory so far" in out
    rows = out[out.index("Rows (from the catalog"):]
    header = rows.splitlines()[1].split()
    assert header == ["python"]  # one column per slice present
    fim = next(line for line in rows.splitlines() if line.strip().startswith("fim_samples"))
    assert int(fim.split()[1]) > 0
    assert "autocomplete_job" not in out  # --data-only trains nothing


def test_pivot_puts_each_slice_in_its_column(capsys):
    from demo import print_pivot

    print_pivot("T", [("a", "java", 3), ("a", "python", 1), ("b", "all", 0.5)])
    lines = capsys.readouterr().out.strip("\n").splitlines()
    assert lines[0] == "T:" and lines[1].split() == ["python", "java", "all"]
    assert lines[2].split() == ["a", "1", "3"] and lines[2].index("3") > lines[2].index("1")
    assert lines[3].split() == ["b", "0.5000"] and lines[3].rindex("0.5000") > lines[2].rindex("3")
