"""Where astforge keeps its state, and the profile (demo | full) that sets default sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def astforge_home() -> Path:
    return Path(os.environ.get("ASTFORGE_HOME", CHECKOUT / ".astforge")).expanduser().resolve()


@dataclass(frozen=True)
class Profile:
    name: str
    max_files_per_slice: int | None  # None: the whole source
    token_cap: int
    max_unit_chars: int


PROFILES = {
    # Small enough that the whole default graph materializes on 2 CPU cores in minutes.
    "demo": Profile("demo", max_files_per_slice=300, token_cap=1024, max_unit_chars=20_000),
    "full": Profile("full", max_files_per_slice=None, token_cap=4096, max_unit_chars=100_000),
}


def active_profile() -> Profile:
    name = os.environ.get("ASTFORGE_PROFILE", "demo")
    if name not in PROFILES:
        raise ValueError(f"ASTFORGE_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
