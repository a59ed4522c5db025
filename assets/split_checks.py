"""The blocking check every dataset that feeds training or evaluation carries: no group key of its ``test`` (or
``dev``) rows occurs in ``train`` (ml/splits.py decides the split from the key once, when the rows are made).

An asset declares ``check_specs=[leak_check_spec("<asset>")]`` and returns ``check_results=[leak_check(rows)]``
with its materialization; a leak fails the check with ERROR severity, which stops the downstream steps of the run
(training on rows that the evaluation will score), and the UI shows the check on the asset.
"""

import warnings
from collections.abc import Iterable, Mapping

import dagster as dg

from assets.partitions import language_slices
from ml.splits import leaked_groups, split_counts

LEAK_CHECK = "no_split_leak"


def leak_check_spec(asset: str, partitions_def: dg.PartitionsDefinition | None = language_slices
                    ) -> dg.AssetCheckSpec:
    """The check of ``asset``; ``partitions_def=None`` for an unpartitioned asset."""
    with warnings.catch_warnings():
        # Dagster marks partitioned check specs as a preview; they run and show per partition in 1.13 as used here.
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        return dg.AssetCheckSpec(
            LEAK_CHECK, asset=asset, blocking=True, partitions_def=partitions_def,
            description="Test and dev rows whose group key (the key that keeps near-duplicates together) also "
                        "occurs in train: must be 0.")


def leak_check(asset: str, rows: Iterable[Mapping[str, object]], *, key: str = "group_key") -> dg.AssetCheckResult:
    rows = list(rows)
    leaks = leaked_groups(rows, key=key)
    counts = split_counts(str(r["split"]) for r in rows)
    leaked_rows = sum(1 for r in rows if r["split"] != "train" and str(r[key]) in set(leaks["test"] + leaks["dev"]))
    return dg.AssetCheckResult(
        asset_key=asset, check_name=LEAK_CHECK, passed=leaked_rows == 0,
        metadata={"leaked_test_groups": len(leaks["test"]), "leaked_dev_groups": len(leaks["dev"]),
                  "leaked_rows": leaked_rows, **{f"rows_{s}": n for s, n in counts.items()},
                  "examples": ", ".join((leaks["test"] + leaks["dev"])[:5]) or "none"})
