"""Shared fixtures: every test gets its own ASTFORGE_HOME and a Dagster instance in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests build every model from config: nothing may reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_sources() -> dict[str, str]:
    return {
        "python": f"dir:{FIXTURES / 'python'}",
        "javascript": f"dir:{FIXTURES / 'javascript'}",
        "java": f"dir:{FIXTURES / 'java'}",
    }


@pytest.fixture
def astforge_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "astforge"
    monkeypatch.setenv("ASTFORGE_HOME", str(home))
    return home


@pytest.fixture
def resources(astforge_home):
    from definitions import build_resources
    from resources import CorpusResource

    return build_resources(corpus=CorpusResource(sources=fixture_sources()))


# -- PostgreSQL (tests/pg_server.py): one throwaway server per test session, a fresh database per test -----------


@pytest.fixture(autouse=True)
def _no_catalog_url_from_the_shell(monkeypatch):
    # A developer's ASTFORGE_CATALOG_URL must not send tests' writes to their real catalog.
    monkeypatch.delenv("ASTFORGE_CATALOG_URL", raising=False)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server on 127.0.0.1 (``.url``, ``.host``, ``.port``, ``.user``, ``.password``, ``.dbname``).
    Skips when the server binaries are missing, fails instead where ASTFORGE_REQUIRE_SERVICES=1 (CI)."""
    from tests.pg_server import postgres_server, unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("ASTFORGE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"ASTFORGE_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_server) -> str:
    """The URL of a new, empty database on the session's server, dropped after the test."""
    with pg_server.fresh_database() as url:
        yield url
