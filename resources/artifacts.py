"""Artifact store: versioned folders under ``artifacts/<asset>/<partition>/<data_version>/``.

Everything is written into a staging folder first and renamed into place, so a reader never sees
a half-written artifact and a failed step leaves the previous version untouched.

Each folder carries ``_manifest.json`` (asset, partition, data version, upstream versions, run, time, rows, and
the catalog table its ``rows.parquet`` feeds): the catalog can be rebuilt from the folders alone. The manifest and
the ``_training_metrics.json`` sidecar describe a registration, not the content: the data version leaves them out.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from resources.settings import astforge_home

MANIFEST = "_manifest.json"
TRAINING_METRICS = "_training_metrics.json"
SIDECARS = frozenset({MANIFEST, TRAINING_METRICS})
MANIFEST_FORMAT = 1


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when it has none (made before manifests existed) or it cannot be read."""
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("format") == MANIFEST_FORMAT else None


class ArtifactStore(dg.ConfigurableResource):
    root: str = ""  # empty: $ASTFORGE_HOME/artifacts

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else astforge_home() / "artifacts"

    def final_path(self, asset: str, partition: str, data_version: str) -> Path:
        return self.root_path / asset / (partition or "_") / data_version

    @contextmanager
    def staging(self, asset: str) -> Iterator[Path]:
        """A fresh folder to write into; removed on exit unless ``commit`` moved it away."""
        tmp = self.root_path / ".staging" / f"{asset}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, asset: str, partition: str, data_version: str) -> tuple[Path, bool]:
        """Rename a staged folder into place. Returns ``(path, created)``; same version = same content."""
        final = self.final_path(asset, partition, data_version)
        if final.exists():
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final, True

    def write_manifest(self, folder: Path, manifest: dict) -> None:
        write_json_atomic(folder / MANIFEST, {"format": MANIFEST_FORMAT, **manifest})

    def manifests(self) -> Iterator[tuple[Path, dict | None]]:
        """Every version folder ``<asset>/<partition>/<version>`` under the root, with its manifest (or None)."""
        root = self.root_path
        if not root.is_dir():
            return
        for folder in sorted(root.glob("*/*/*")):
            rel = folder.relative_to(root).parts
            if not folder.is_dir() or any(p.startswith(".") for p in rel) or rel[-1].startswith("_"):
                continue  # .staging, <asset>/<partition>/_checkpoints
            yield folder, read_manifest(folder)
