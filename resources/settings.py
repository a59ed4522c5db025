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
    base_model: str  # hub id, local folder, or tiny:<architecture>
    phase1_steps: int
    phase2_steps: int
    batch_size: int
    max_length: int  # tokenizer tokens per training sequence
    learning_rate: float
    eval_samples: int  # sampled ASTs / held-out docstrings per metric


PROFILES = {
    # Small enough that the whole default graph materializes on 2 CPU cores in minutes.
    "demo": Profile(
        "demo", max_files_per_slice=300, token_cap=1024, max_unit_chars=20_000, base_model="tiny:qwen2",
        phase1_steps=150, phase2_steps=150, batch_size=8, max_length=256, learning_rate=3e-3, eval_samples=16,
    ),
    # The seed's numbers: Qwen2.5-0.5B (4-bit + LoRA on CUDA), 4096-token AST cap.
    "full": Profile(
        "full", max_files_per_slice=None, token_cap=4096, max_unit_chars=100_000, base_model="Qwen/Qwen2.5-0.5B",
        phase1_steps=3000, phase2_steps=2000, batch_size=8, max_length=4096, learning_rate=2e-4, eval_samples=200,
    ),
}


def active_profile() -> Profile:
    name = os.environ.get("ASTFORGE_PROFILE", "demo")
    if name not in PROFILES:
        raise ValueError(f"ASTFORGE_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
