"""Dataset rows of the DSL pipeline: stable ids, the train/test split of requests, mutated negatives."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ml.dsl.domains import DomainSpec, schema_errors
from ml.dsl.format import ast_to_text
from ml.dsl.mutations import mutate


def row_id(*parts: object) -> str:
    """A stable 16-hex id from the parts (same parts, same id, in every run)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def request_split(domain_split: str, domain: str, request_key: str, test_fraction: float, seed: int) -> str:
    """``heldout_domain`` stays; a training domain's request goes to ``test`` with probability ``test_fraction``,
    decided by a hash of ``request_key`` (give both languages of one request the same key: they share a split)."""
    if domain_split != "train":
        return domain_split
    draw = int(hashlib.sha256(f"{seed}:{domain}:{request_key}".encode()).hexdigest()[:8], 16) / 16**8
    return "test" if draw < test_fraction else "train"


def mutated_negatives(
    positives: Sequence[Mapping[str, Any]],
    specs: Mapping[str, DomainSpec],
    schemas: Mapping[str, dict],
    negative_ratio: float,
    seed: int,
) -> tuple[list[dict], int]:
    """Per domain, ``round(n_positives * negative_ratio)`` seeded positives mutated into schema-invalid rows
    (``valid=False``, ``mutation`` kind, first schema ``errors``). Returns the rows and how many mutations were
    still schema-valid (dropped; a mutation is meant to break the schema)."""
    out, still_valid = [], 0
    for domain in specs:
        mine = [r for r in positives if r["domain"] == domain]
        rng = random.Random(f"negatives:{seed}:{domain}")
        for r in rng.sample(mine, min(len(mine), round(len(mine) * negative_ratio))):
            bad, kind = mutate(json.loads(r["ast_json"]), rng, specs[domain])
            errors = schema_errors(bad, schemas[domain])
            if not errors:
                still_valid += 1
                continue
            out.append({**r, "id": row_id(r["id"], kind), "ast_json": ast_to_text(bad), "valid": False,
                        "mutation": kind, "errors": errors[0][:300]})
    return out, still_valid
