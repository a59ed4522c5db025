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


def _importorskip_targets(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
                and node.args and isinstance(node.args[0], ast.Constant)):
            out.append(str(node.args[0].value))
    return out


def test_tests_skip_only_on_the_optional_gpu_extra():
    """A pinned dependency is imported plainly: importorskip would turn a broken install into green skips."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = {name.replace("-", "_").lower() for name in project["optional-dependencies"]["gpu"]}
    bad = [
        f"{path.relative_to(ROOT)}: skips when {name!r} is missing"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for name in _importorskip_targets(path)
        if name.split(".")[0].lower() not in optional
    ]
    assert not bad, "\n".join(bad)
