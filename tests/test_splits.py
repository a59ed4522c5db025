"""ml/splits.py: the split is a stable function of the group key, near-duplicates share a key, and the leak count
finds a planted leak."""

from __future__ import annotations

from collections import Counter

import pytest

from ml.languages import get_language
from ml.splits import code_key, leaked_groups, near_duplicate_keys, shingles, split_counts, split_of


def test_split_of_is_stable_and_follows_the_fractions():
    keys = [f"group-{i}" for i in range(4000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]  # the same key, the same split, every time
    counts = Counter(splits)
    assert counts["test"] / len(keys) == pytest.approx(0.2, abs=0.03)
    assert counts["dev"] / len(keys) == pytest.approx(0.1, abs=0.03)
    assert split_of("group-1", dev=0.0, test=0.0) == "train"
    with pytest.raises(ValueError):
        split_of("x", dev=0.5, test=0.5)


def test_renamed_copies_share_a_code_key_and_so_a_split():
    rename = get_language("python").renamer
    original = "def add(a, b):\n    total = a + b\n    return total\n"
    copies = ["def plus(x, y):\n    s = x + y\n    return s\n",
              "def add_numbers(first,   second):\n    result = first + second\n    return result\n"]
    keys = {code_key(rename(code).code) for code in [original, *copies]}
    assert len(keys) == 1
    different = code_key(rename("def sub(a, b):\n    return a - b\n").code)
    assert different not in keys


CDK_EXAMPLE = """
const bucket = new s3.Bucket(this, 'MyBucket', {
  versioned: true,
  encryption: s3.BucketEncryption.KMS_MANAGED,
  removalPolicy: cdk.RemovalPolicy.DESTROY,
  lifecycleRules: [{ expiration: cdk.Duration.days(30) }],
});
bucket.grantRead(new iam.AccountRootPrincipal());
"""


def test_edited_examples_cluster_and_unrelated_ones_do_not():
    edited = CDK_EXAMPLE.replace("MyBucket", "LogsBucket")
    edited_twice = edited.replace("days(30)", "days(90)")
    unrelated = "queue = sqs.Queue(self, 'Queue', visibility_timeout=Duration.seconds(300))\nqueue.grant_send(fn)\n"
    other = "table = dynamodb.Table(self, 'Table', partition_key=Attribute(name='id', type=AttributeType.STRING))\n"
    keys = near_duplicate_keys([CDK_EXAMPLE, unrelated, edited, other, edited_twice])
    assert keys[0] == keys[2] == keys[4]
    assert len({keys[0], keys[1], keys[3]}) == 3
    assert shingles("a b", size=5) == {"a b"} and shingles("") == set()


def test_planted_near_duplicates_land_in_one_split():
    """A corpus with renamed copies, edited examples and EN/FR twins: every family of near-duplicates gets one
    split, whichever member the hash would have sent elsewhere on its own."""
    rename = get_language("python").renamer
    rows = []
    for i in range(60):
        body = f"def f(a):\n    return a * {i} + {i * 7}\n"
        for name in ("f", "g", "compute"):  # renamed copies
            renamed = rename(body.replace("f(", name + "(")).code
            rows.append({"kind": "code", "family": f"code-{i}", "group_key": code_key(renamed)})
    examples = [CDK_EXAMPLE.replace("30", str(n)).replace("MyBucket", f"Bucket{n}") for n in range(40)]
    unrelated = [f"x{n} = service_{n}.call_{n}(alpha_{n}, beta_{n}, gamma_{n}, delta_{n})" for n in range(40)]
    for text, key in zip(examples + unrelated, near_duplicate_keys(examples + unrelated), strict=True):
        rows.append({"kind": "cdk", "family": "cdk-bucket" if text in examples else text, "group_key": key})
    for i in range(50):  # EN/FR twins keyed by the request's AST
        ast = f'{{"op": "gt", "field": "price", "value": {i}}}'
        rows += [{"kind": "dsl", "family": f"dsl-{i}", "group_key": ast} for _ in ("en", "fr")]
    for row in rows:
        row["split"] = split_of(row["group_key"])
    by_family: dict[str, set[str]] = {}
    for row in rows:
        by_family.setdefault(row["family"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_family.values())
    assert leaked_groups(rows) == {"test": [], "dev": []}
    counts = split_counts(r["split"] for r in rows)
    assert counts["train"] and counts["test"]


def test_a_planted_leak_is_counted():
    rows = [{"group_key": "a", "split": "train"}, {"group_key": "a", "split": "test"},
            {"group_key": "b", "split": "dev"}, {"group_key": "b", "split": "train"},
            {"group_key": "c", "split": "test"}]
    assert leaked_groups(rows) == {"test": ["a"], "dev": ["b"]}
    with pytest.raises(ValueError):
        leaked_groups([{"group_key": "a", "split": "heldout"}])
