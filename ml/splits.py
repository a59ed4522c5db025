"""The split is data: every row gets ``train``, ``dev`` or ``test`` once, when the data is made, from a *group key*
that keeps near-duplicates together, so that no renamed copy, edited example or translation of a test item is ever
trained on.

- :func:`split_of` — the split of one group key: a stable hash (sha256 of salt + key) mapped onto the fractions, so
  the same key gets the same split in every run, on every machine, whatever else the corpus holds.
- :func:`near_duplicate_keys` — group keys for texts that are near-duplicates of each other (MinHash LSH over token
  shingles, Jaccard >= threshold, joined transitively), for data whose copies are edited rather than renamed.
- :func:`leaked_groups` — the group keys that occur both in ``test`` (or ``dev``) and in ``train``: what the
  blocking asset checks count, and must find empty.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

SPLITS = ("train", "dev", "test")
DEFAULT_DEV_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
SPLIT_SALT = "astforge-split-v1"

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+|\S")


def split_of(group_key: str, *, dev: float = DEFAULT_DEV_FRACTION, test: float = DEFAULT_TEST_FRACTION,
             salt: str = SPLIT_SALT) -> str:
    """``train``/``dev``/``test`` for ``group_key``: test takes the first ``test`` of the hash range, dev the next
    ``dev``, train the rest."""
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise ValueError(f"dev ({dev}) and test ({test}) fractions must be in [0, 1) and leave room for train")
    digest = hashlib.sha256(f"{salt}\x00{group_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + dev:
        return "dev"
    return "train"


def code_key(normalized_code: str) -> str:
    """The group key of a piece of code already alpha-renamed (and, where the pipeline does so, stripped of its
    docstring): whitespace runs collapsed, hashed. Renamed copies of one function share it."""
    return "code-" + hashlib.sha256(" ".join(normalized_code.split()).encode()).hexdigest()[:20]


def shingles(text: str, size: int = 3) -> set[str]:
    """Token ``size``-grams of ``text`` (identifiers, numbers and single punctuation characters as tokens)."""
    tokens = _TOKEN.findall(text)
    if len(tokens) <= size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def near_duplicate_keys(texts: Sequence[str], *, threshold: float = 0.8, num_perm: int = 128,
                        shingle_size: int = 3, seed: int = 1) -> list[str]:
    """One group key per text; texts whose token-shingle Jaccard similarity is at least ``threshold`` (as MinHash
    LSH estimates it), directly or through a chain of such texts, share a key (the cluster's first text's index)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, text in enumerate(texts):
        sketch = MinHash(num_perm=num_perm, seed=seed)
        for shingle in shingles(text, shingle_size):
            sketch.update(shingle.encode("utf-8"))
        for other in lsh.query(sketch):
            a, b = root(i), root(int(other))
            if a != b:
                parent[max(a, b)] = min(a, b)
        lsh.insert(str(i), sketch)
    return [f"near-dup-{root(i)}" for i in range(len(texts))]


def leaked_groups(rows: Iterable[Mapping[str, object]], *, key: str = "group_key",
                  split: str = "split") -> dict[str, list[str]]:
    """``{"test": [...], "dev": [...]}``: group keys of that split that also occur in ``train`` (sorted)."""
    by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for row in rows:
        name = str(row[split])
        if name not in by_split:
            raise ValueError(f"unknown split {name!r} (expected one of {SPLITS})")
        by_split[name].add(str(row[key]))
    return {s: sorted(by_split[s] & by_split["train"]) for s in ("test", "dev")}


def split_counts(splits: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for s in splits:
        counts[s] += 1
    return counts
