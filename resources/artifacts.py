"""Artifact store: versioned folders under ``artifacts/<asset>/<partition>/<data_version>/``.

Everything is written into a staging folder first and renamed into place, so a reader never sees
a half-written artifact and a failed step leaves the previous version untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from resources.settings import astforge_home


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
