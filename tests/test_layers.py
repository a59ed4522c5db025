"""The import direction of ARCHITECTURE.md: assets -> resources -> ml, jobs -> assets, ml imports no orchestration."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "ml": {"dagster", "dagster_duckdb", "dagster_webserver", "assets", "resources", "jobs", "definitions"},
    "resources": {"assets", "jobs", "definitions"},
    "assets": {"jobs", "definitions"},
    "jobs": {"definitions"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_import_graph_follows_the_layers():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            hits = imported_roots(path) & forbidden
            bad += [f"{path.relative_to(ROOT)} imports {h}" for h in sorted(hits)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import dagster\nfrom assets.corpus import code_units\n")
    assert imported_roots(bad) == {"dagster", "assets"}


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
