"""Artifact store: versioned folders under ``artifacts/<asset>/<partition>/<data_version>/``.

Everything is written into a staging folder first and renamed into place, so a reader never sees
a half-written artifact and a failed step leaves the previous version untouched.

With an object store (``url``, or ``$ASTFORGE_ARTIFACTS_URL``: any fsspec URL, ``s3://bucket/prefix`` for S3 and
S3-compatible stores, ``file:///shared/path``), the object store is the one every machine shares and the local
folders are this machine's copy: a commit uploads the version under a staging key first, then copies it to the
version's key with its manifest last, before the catalog hears of it; a machine that lacks a version the catalog
names fetches it (``ensure_local``). A failed upload raises before the catalog registers anything, so the
previous version stays the current one everywhere.

Each folder carries ``_manifest.json`` (asset, partition, data version, upstream versions, run, time, rows, and
the catalog table its ``rows.parquet`` feeds): the catalog can be rebuilt from the folders alone. The manifest and
the ``_training_metrics.json`` sidecar describe a registration, not the content: the data version leaves them out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import fsspec

from resources.settings import astforge_home

MANIFEST = "_manifest.json"
TRAINING_METRICS = "_training_metrics.json"
SIDECARS = frozenset({MANIFEST, TRAINING_METRICS})
MANIFEST_FORMAT = 1
ARTIFACTS_URL_ENV = "ASTFORGE_ARTIFACTS_URL"
_log = logging.getLogger("astforge.artifacts")


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


def ensure_local(folder: Path) -> bool:
    """``ArtifactStore.ensure_local`` of the store the environment configures (the catalog's readers use it)."""
    return ArtifactStore().ensure_local(folder)


class ArtifactStore(dg.ConfigurableResource):
    root: str = ""  # empty: $ASTFORGE_HOME/artifacts
    # the object store every machine shares (fsspec URL); empty: $ASTFORGE_ARTIFACTS_URL, else local folders only
    url: str = ""

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else astforge_home() / "artifacts"

    @property
    def remote_url(self) -> str | None:
        url = (self.url or os.environ.get(ARTIFACTS_URL_ENV, "")).rstrip("/")
        return url or None

    def _remote(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The object store's filesystem and its root path. S3 credentials and endpoint come from the usual AWS
        variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible stores)."""
        fs, root = fsspec.core.url_to_fs(self.remote_url)
        return fs, root.rstrip("/")

    def remote_key(self, folder: Path) -> str:
        """The object-store key of a local version folder (its path under the root)."""
        _, root = self._remote()
        return f"{root}/{folder.relative_to(self.root_path).as_posix()}"

    def upload(self, folder: Path, asset: str, partition: str, data_version: str) -> str:
        """``folder`` to the version's key: every file to a staging key, then copied into place with the manifest
        last, so a reader that finds the manifest finds every file. Returns the version's URL."""
        fs, root = self._remote()
        final = f"{root}/{asset}/{partition or '_'}/{data_version}"
        staging = f"{root}/.staging/{asset}-{uuid.uuid4().hex[:12]}"
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p)))
        try:
            for f in files:
                target = f"{staging}/{f.relative_to(folder).as_posix()}"
                fs.makedirs(fs._parent(target), exist_ok=True)  # a local or mounted store has real folders
                fs.put_file(str(f), target)
            for f in files:
                rel = f.relative_to(folder).as_posix()
                fs.makedirs(fs._parent(f"{final}/{rel}"), exist_ok=True)
                fs.copy(f"{staging}/{rel}", f"{final}/{rel}")
        finally:
            try:
                fs.rm(staging, recursive=True)
            except FileNotFoundError:
                pass
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return f"{protocol}://{final}"

    def ensure_local(self, folder: Path) -> bool:
        """Whether the version folder is on this machine, after fetching it from the object store when the store
        has it (manifest present) and this machine does not. Folders outside the root are never fetched."""
        if folder.exists():
            return True
        if not self.remote_url:
            return False
        try:
            key = self.remote_key(folder)
        except ValueError:
            return False
        fs, _ = self._remote()
        if not fs.exists(f"{key}/{MANIFEST}"):
            return False
        _log.info(f"fetching {folder.relative_to(self.root_path)} from {self.remote_url}")
        with self.staging("fetch") as tmp:
            for remote in fs.find(key):
                local = tmp / Path(remote[len(key) + 1:])
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.exists():  # another process fetching the same version got there first: fine
                    raise
        return True

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
        """Rename a staged folder into place, after uploading it when there is an object store. Returns
        ``(path, created)``; same version = same content."""
        final = self.final_path(asset, partition, data_version)
        if self.remote_url:
            self.upload(staged, asset, partition, data_version)
        if final.exists():
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final, True

    def write_manifest(self, folder: Path, manifest: dict) -> None:
        """The folder's manifest; in the object store too when the folder is already there (a registration of
        content it has)."""
        write_json_atomic(folder / MANIFEST, {"format": MANIFEST_FORMAT, **manifest})
        if self.remote_url and folder.is_relative_to(self.root_path) and not folder.is_relative_to(
                self.root_path / ".staging"):
            fs, _ = self._remote()
            fs.put_file(str(folder / MANIFEST), f"{self.remote_key(folder)}/{MANIFEST}")

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
