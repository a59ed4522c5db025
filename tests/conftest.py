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
