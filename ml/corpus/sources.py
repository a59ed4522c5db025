"""Corpus sources: a spec string names where a slice's files come from.

``default``                 the language's embedded default found on this machine
``dir:/path``               a local folder or git checkout, walked with the language's globs
``zip:/path/archive.zip``   a zip archive (the JDK's ``lib/src.zip`` is one)
``hf:NAME_OR_PATH?k=v&...`` a Hugging Face dataset through ``datasets``, streamed; keys:
                            ``split`` (train), ``data_dir``, ``text_column`` (content),
                            ``path_column`` (path), ``limit``
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from ml.units import SourceSpec


@dataclass(frozen=True)
class RawFile:
    source: str  # the spec it came from, as written in the rows' ``source`` column
    path: str  # relative to the source root (or the dataset row's path column)
    data: bytes


class SourceError(ValueError):
    pass


def parse_spec(spec: str) -> SourceSpec:
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("dir", "zip", "hf"):
        raise SourceError(f"corpus source {spec!r}: expected 'dir:PATH', 'zip:PATH' or 'hf:NAME[?k=v&...]'")
    location, _, query = rest.partition("?")
    if not location:
        raise SourceError(f"corpus source {spec!r} names no location")
    return SourceSpec(kind, location, tuple(parse_qsl(query)))


def _matches(rel: str, globs: tuple[str, ...], excludes: tuple[str, ...]) -> bool:
    # fnmatch's "*" crosses "/", so "**/*.py" would miss top-level files: match the basename too.
    name = rel.rsplit("/", 1)[-1]
    if not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g.rsplit("/", 1)[-1]) for g in globs):
        return False
    return not any(fnmatch.fnmatch(rel, x) for x in excludes)


def list_dir(
    root: Path, globs: tuple[str, ...], excludes: tuple[str, ...], skipped: Counter | None = None
) -> list[Path]:
    """Matching files under ``root``. Linked folders are not followed; one that links back to a folder above it
    (a loop) is counted in ``skipped`` as ``symlink_loop``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
        if skipped is not None:
            here = os.path.realpath(dirpath)
            for d in dirnames:
                link = os.path.join(dirpath, d)
                target = os.path.realpath(link)
                if os.path.islink(link) and (here == target or here.startswith(target.rstrip(os.sep) + os.sep)):
                    skipped["symlink_loop"] += 1
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            rel = full.relative_to(root).as_posix()
            if _matches(rel, globs, excludes):
                found.append(full)
    return found


def iter_files(
    spec: SourceSpec, globs: tuple[str, ...], excludes: tuple[str, ...] = (), limit: int | None = None,
    skipped: Counter | None = None,
) -> Iterator[RawFile]:
    """Yield the raw files of one source, in a stable order, at most ``limit`` of them. A listed file that cannot
    be read is counted in ``skipped``: ``symlink_loop`` (a link that leads back to itself), ``broken_symlink``,
    or ``unreadable`` (permissions, a file removed meanwhile)."""
    if spec.kind == "missing":
        return
    if spec.kind == "dir":
        root = Path(spec.location).expanduser()
        if not root.is_dir():
            raise SourceError(f"corpus folder {root} does not exist")
        for i, full in enumerate(list_dir(root, globs, excludes, skipped)):
            if limit is not None and i >= limit:
                return
            try:
                data = full.read_bytes()
            except OSError as exc:
                if skipped is not None:
                    skipped[_unreadable_reason(full, exc)] += 1
                continue
            yield RawFile(spec.label, full.relative_to(root).as_posix(), data)
    elif spec.kind == "zip":
        archive = Path(spec.location).expanduser()
        if not archive.is_file():
            raise SourceError(f"corpus archive {archive} does not exist")
        with zipfile.ZipFile(archive) as zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/") and _matches(n, globs, excludes))
            for i, name in enumerate(names):
                if limit is not None and i >= limit:
                    return
                yield RawFile(spec.label, name, zf.read(name))
    elif spec.kind == "hf":
        yield from _iter_hf(spec, limit)
    else:
        raise SourceError(f"unknown corpus source kind {spec.kind!r}")


def _unreadable_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink_loop"
    if path.is_symlink() and exc.errno == errno.ENOENT:
        return "broken_symlink"
    return "unreadable"


def _iter_hf(spec: SourceSpec, limit: int | None) -> Iterator[RawFile]:
    """Stream rows of a Hugging Face dataset (hub id or a local dataset folder)."""
    import datasets  # imported here: only users of this source pay for it

    text_column = spec.option("text_column", "content")
    path_column = spec.option("path_column", "path")
    opt_limit = spec.option("limit")
    if opt_limit is not None:
        limit = int(opt_limit) if limit is None else min(limit, int(opt_limit))
    ds = datasets.load_dataset(
        spec.location, data_dir=spec.option("data_dir"), split=spec.option("split", "train"), streaming=True
    )
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            return
        text = row.get(text_column)
        if text is None:
            raise SourceError(f"dataset {spec.location} has no column {text_column!r}: set text_column=...")
        path = str(row.get(path_column) or f"row-{i}")
        yield RawFile(spec.label, path, text.encode("utf-8") if isinstance(text, str) else bytes(text))


def fingerprint(spec: SourceSpec, globs: tuple[str, ...], excludes: tuple[str, ...] = ()) -> str:
    """A cheap hash of names, sizes and mtimes: it changes when a file of a local source changes."""
    h = hashlib.sha256()
    if spec.kind == "dir" and Path(spec.location).is_dir():
        for full in list_dir(Path(spec.location), globs, excludes):
            st = full.stat()
            h.update(f"{full}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif spec.kind == "zip" and Path(spec.location).is_file():
        st = Path(spec.location).stat()
        h.update(f"{spec.location}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        h.update(spec.label.encode())
    return h.hexdigest()[:16]
