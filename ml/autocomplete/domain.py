"""The Stage B domain corpus: code examples of one library, read offline.

The default domain is AWS CDK. The ``aws-cdk-lib`` wheel on PyPI is mostly generated jsii wrappers, but its
docstrings carry the library's README examples: ```` ```python ```` fences in module docstrings and about 20,000
``Example::`` blocks (reStructuredText literal blocks) in class and method docstrings. They are read as text
(the package is never imported; its runtime, jsii and Node.js, is not needed), filtered like the corpus group's
files (parse, size, duplicates; every skip counted by reason) and deduplicated. Examples repeat with small
edits (one README snippet per construct variant), so the split is by near-duplicate cluster (:func:`domain_units`).

A user's own domain is ``dir:PATH`` or ``zip:PATH``: every ``*.py`` file there is one example.
"""

from __future__ import annotations

import ast
import hashlib
import re
import textwrap
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DOMAIN = "default"
CDK_PACKAGE = "aws-cdk-lib"

_FENCE = re.compile(r"```python[ \t]*\n(.*?)```", re.S)
_EXAMPLE = re.compile(r"^([ \t]*)Example::[ \t]*$", re.M)


@dataclass
class DomainExamples:
    """Examples (``source`` = where each came from, ``code``) and skip counts by reason."""

    examples: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    files_read: int = 0


def literal_blocks(text: str) -> Iterator[str]:
    """The code of each ```` ```python ```` fence and each ``Example::`` literal block in ``text``, dedented.

    A literal block is every line after the ``Example::`` line that is blank or indented deeper than it; it ends
    at the first line that is not (the docstring's closing quotes, the next paragraph)."""
    for m in _FENCE.finditer(text):
        yield textwrap.dedent(m.group(1))
    lines = text.splitlines()
    starts = {text.count("\n", 0, m.start()): len(m.group(1).expandtabs()) for m in _EXAMPLE.finditer(text)}
    for first, indent in starts.items():
        body = []
        for line in lines[first + 1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        yield textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def _clean(code: str, *, min_chars: int, max_chars: int) -> tuple[str | None, str | None]:
    code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines()) + "\n"
    if len(code.strip()) < min_chars:
        return None, "too_short"
    if len(code) > max_chars:
        return None, "too_long"
    if "'''" in code or '"""' in code and code.count('"""') % 2:
        return None, "docstring_fragment"
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return None, "syntax_error"
    return code, None


def _cdk_files() -> list[Path]:
    from importlib import metadata

    try:
        dist = metadata.distribution(CDK_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default domain corpus reads the PyPI package {CDK_PACKAGE!r}, which is not installed; "
            f"`make install` installs it (pip install --no-deps {CDK_PACKAGE}==2.275.0), or set the source to "
            "dir:PATH / zip:PATH for your own domain") from None
    return sorted(Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith("__init__.py")
                  and "_jsii" not in str(f))


def _user_files(source: str) -> Iterator[tuple[str, str]]:
    kind, _, where = source.partition(":")
    path = Path(where).expanduser()
    if kind == "dir":
        if not path.is_dir():
            raise FileNotFoundError(f"domain source {source!r}: {path} is not a directory")
        for p in sorted(path.rglob("*.py")):
            yield str(p.relative_to(path)), p.read_text(encoding="utf-8", errors="replace")
    elif kind == "zip":
        if not path.is_file():
            raise FileNotFoundError(f"domain source {source!r}: {path} is not a file")
        with zipfile.ZipFile(path) as z:
            for name in sorted(n for n in z.namelist() if n.endswith(".py")):
                yield name, z.read(name).decode("utf-8", errors="replace")
    else:
        raise ValueError(f"domain source must be {DEFAULT_DOMAIN!r}, dir:PATH or zip:PATH, not {source!r}")


def domain_examples(source: str = DEFAULT_DOMAIN, *, max_examples: int = 0, min_chars: int = 40,
                    max_chars: int = 2000) -> DomainExamples:
    """Parsing, deduplicated examples of the domain ``source``; ``max_examples`` > 0 stops after that many."""
    out = DomainExamples()
    seen: set[str] = set()

    def add(origin: str, code: str) -> bool:
        cleaned, why = _clean(code, min_chars=min_chars, max_chars=max_chars)
        if cleaned is None:
            out.skipped[why] += 1
            return False
        digest = hashlib.sha256(cleaned.encode()).hexdigest()
        if digest in seen:
            out.skipped["duplicate"] += 1
            return False
        seen.add(digest)
        out.examples.append({"source": origin, "code": cleaned})
        return bool(max_examples) and len(out.examples) >= max_examples

    if source == DEFAULT_DOMAIN:
        for path in _cdk_files():
            out.files_read += 1
            module = ".".join(path.parent.parts[path.parent.parts.index("aws_cdk"):])
            for code in literal_blocks(path.read_text(encoding="utf-8", errors="replace")):
                if add(f"{CDK_PACKAGE}:{module}", code):
                    return out
    else:
        for name, text in _user_files(source):
            out.files_read += 1
            if add(name, text):
                return out
    return out


def _leading_comment(code: str) -> tuple[str, str]:
    """(the example's leading ``#`` comment text, the code after it)."""
    lines = code.splitlines(keepends=True)
    k = 0
    while k < len(lines) and lines[k].lstrip().startswith("#"):
        k += 1
    comment = "".join(line.strip().lstrip("#").strip() + "\n" for line in lines[:k]).strip()
    return comment, "".join(lines[k:]).lstrip("\n")


NEAR_DUPLICATE_THRESHOLD = 0.8  # token-shingle Jaccard: the CDK README examples repeat with a changed name or value


def domain_group_keys(codes: list[str], *, threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[str]:
    """One split group key per example: examples that are near-duplicates (``ml.splits.near_duplicate_keys``,
    directly or through a chain) share one. The key is the hash of the cluster's first example's code, not its
    position, so a cluster keeps its split when examples elsewhere in the corpus come or go."""
    from ml.splits import near_duplicate_keys

    clusters = near_duplicate_keys(codes, threshold=threshold)
    first: dict[str, str] = {}
    for cluster, code in zip(clusters, codes):
        first.setdefault(cluster, code)
    return [f"domain-{hashlib.sha256(first[c].encode()).hexdigest()[:16]}" for c in clusters]


def domain_units(examples: list[dict], *, threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[dict]:
    """Examples as code units (``id path code docstring group_key``): each example its own "file", its leading
    comment as the docstring of a comment-to-code row; ``group_key`` (the split's key) is shared by near-duplicate
    examples, so an edited copy of a test example is never trained on."""
    keys = domain_group_keys([ex["code"] for ex in examples], threshold=threshold)
    units = []
    for ex, key in zip(examples, keys):
        digest = hashlib.sha256(ex["code"].encode()).hexdigest()[:16]
        comment, _ = _leading_comment(ex["code"])
        units.append({"id": f"domain:{digest}", "path": f"{ex['source']}/{digest}", "code": ex["code"],
                      "docstring": comment or None, "group_key": key})
    return units


def without_leading_comment(code: str) -> str | None:
    """The code a comment-to-code row asks for (None when nothing is left)."""
    return _leading_comment(code)[1] or None
