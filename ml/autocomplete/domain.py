"""The Stage B domain corpus: code examples of one library, read offline, per language slice.

The default domain is AWS CDK, from two packages that are read as files and never executed or imported:

- ``python``: the ``aws-cdk-lib`` wheel on PyPI. It is mostly generated jsii wrappers, but its docstrings carry the
  library's README examples: ```` ```python ```` fences in module docstrings and about 20,000 ``Example::`` blocks
  (reStructuredText literal blocks) in class and method docstrings.
- ``javascript`` and ``java``: the ``aws-cdk-lib`` package on npm (``make install`` unpacks its jsii tablet,
  ``.jsii.tabl.json.gz``, into the venv). The tablet holds every README and API-doc example (about 23,000) in
  TypeScript, the library's own language, with jsii-rosetta's translations to Python, Java, C# and Go. The
  ``javascript`` slice takes the TypeScript examples that are plain JavaScript too (no type annotations, no
  ``declare``: about 3,500; the others are counted as ``typescript_only``), so that one parser (the slice's) judges
  the rows, the completions and their syntax. The ``java`` slice takes the Java translations.

Examples are filtered like the corpus group's files (parse, size, duplicates; every skip counted by reason) and
deduplicated. They repeat with small edits (one README snippet per construct variant), so the split is by
near-duplicate cluster (:func:`domain_units`).

A user's own domain is ``dir:PATH`` or ``zip:PATH`` (every file of the slice's language there is one example) or
``npm:PATH``: the jsii tablet of any jsii library, as its npm tarball (``.tgz``), its unpacked folder or the
tablet file itself.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import sys
import tarfile
import textwrap
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ml.autocomplete.fim import LINE_COMMENT

DEFAULT_DOMAIN = "default"
CDK_PACKAGE = "aws-cdk-lib"
CDK_VERSION = "2.275.0"  # the wheel and the npm package (scripts/install.sh pins both)
# where scripts/install.sh unpacks the npm package's jsii tablet (and package.json): inside the venv, like the wheel
CDK_NPM_DIR = Path(sys.prefix) / "share" / "astforge" / CDK_PACKAGE
TABLET = ".jsii.tabl.json"
# a slice's key in a jsii tablet's translations ("$" is the original TypeScript)
TABLET_KEYS = {"python": "python", "javascript": "$", "java": "java"}

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


def _clean(code: str, language: str, *, min_chars: int, max_chars: int,
           unparsed: str = "syntax_error") -> tuple[str | None, str | None]:
    """(the example with trailing spaces cut, None) or (None, the reason it is skipped); ``unparsed`` names the
    reason for code the slice's parser refuses."""
    code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines()) + "\n"
    if len(code.strip()) < min_chars:
        return None, "too_short"
    if len(code) > max_chars:
        return None, "too_long"
    if language == "python":
        if "'''" in code or '"""' in code and code.count('"""') % 2:
            return None, "docstring_fragment"
        try:
            ast.parse(code)
        except (SyntaxError, ValueError):
            return None, unparsed
        return code, None
    from ml.autocomplete.metrics import syntax_valid

    return (code, None) if syntax_valid(code, language) else (None, unparsed)


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


def _user_files(source: str, language: str) -> Iterator[tuple[str, str]]:
    from ml.languages import get_language

    suffixes = tuple(g.rsplit("*", 1)[-1] for g in get_language(language).globs)  # "**/*.js" -> ".js"
    kind, _, where = source.partition(":")
    path = Path(where).expanduser()
    if kind == "dir":
        if not path.is_dir():
            raise FileNotFoundError(f"domain source {source!r}: {path} is not a directory")
        for p in sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)):
            yield str(p.relative_to(path)), p.read_text(encoding="utf-8", errors="replace")
    elif kind == "zip":
        if not path.is_file():
            raise FileNotFoundError(f"domain source {source!r}: {path} is not a file")
        with zipfile.ZipFile(path) as z:
            for name in sorted(n for n in z.namelist() if n.endswith(suffixes)):
                yield name, z.read(name).decode("utf-8", errors="replace")
    else:
        raise ValueError(f"domain source must be {DEFAULT_DOMAIN!r}, dir:PATH, zip:PATH or npm:PATH, not {source!r}")


def read_tablet(path: Path) -> dict:
    """The snippets of a jsii tablet (``{key: {"translations": {"$": {"source": ...}, "java": ...}, "location":
    ...}}``) from an npm package tarball, its unpacked folder (``package/`` or not) or the tablet itself (``.json``
    or ``.json.gz``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no jsii tablet at {path}")
    if path.is_dir():
        found = [p for name in (TABLET + ".gz", TABLET) for p in (path / name, path / "package" / name) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no {TABLET}(.gz): is it a jsii package?")
        path = found[0]
    if path.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(path) as tar:
            for name in (f"package/{TABLET}.gz", f"package/{TABLET}"):
                try:
                    data = tar.extractfile(name).read()
                except KeyError:
                    continue
                return _tablet_snippets(gzip.decompress(data) if name.endswith(".gz") else data, path)
        raise FileNotFoundError(f"{path} holds no package/{TABLET}(.gz): is it a jsii package?")
    data = path.read_bytes()
    return _tablet_snippets(gzip.decompress(data) if path.name.endswith(".gz") else data, path)


def _tablet_snippets(data: bytes, path: Path) -> dict:
    try:
        snippets = json.loads(data)["snippets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a jsii tablet (no 'snippets' object): {exc}") from exc
    if not isinstance(snippets, dict):
        raise ValueError(f"{path} is not a jsii tablet ('snippets' is not an object)")
    return snippets


def _tablet_examples(path: Path, language: str) -> Iterator[tuple[str, str | None]]:
    """(origin, code) of each snippet's translation into ``language`` (code None where it has none)."""
    key = TABLET_KEYS[language]
    for snippet_key, snippet in sorted(read_tablet(path).items()):
        location = (snippet.get("location") or {}).get("api") or {}
        where = location.get("fqn") or location.get("moduleFqn") or snippet_key[:16]
        source = ((snippet.get("translations") or {}).get(key) or {}).get("source")
        yield where, source if isinstance(source, str) else None


def _default_tablet() -> Path:
    if not CDK_NPM_DIR.is_dir():
        raise FileNotFoundError(
            f"the javascript and java slices of the default domain corpus read the npm package {CDK_PACKAGE!r}, "
            f"which is not unpacked at {CDK_NPM_DIR}; `make install` puts it there (its aws-cdk-lib-npm stage "
            "needs npm), or set the source to npm:PATH (an aws-cdk-lib-*.tgz from `npm pack aws-cdk-lib`), "
            "dir:PATH or zip:PATH")
    return CDK_NPM_DIR


def domain_examples(source: str = DEFAULT_DOMAIN, *, language: str = "python", max_examples: int = 0,
                    min_chars: int = 40, max_chars: int = 2000) -> DomainExamples:
    """Parsing, deduplicated examples of the domain ``source`` in ``language`` (a slice); ``max_examples`` > 0 stops
    after that many."""
    if language not in TABLET_KEYS:
        raise ValueError(f"no domain corpus for the slice {language!r} (slices: {', '.join(TABLET_KEYS)})")
    out = DomainExamples()
    seen: set[str] = set()
    # a tablet's TypeScript originals that the JavaScript parser refuses are TypeScript-only code, not broken code
    tablet_unparsed = "typescript_only" if language == "javascript" else "syntax_error"

    def add(origin: str, code: str | None, unparsed: str = "syntax_error") -> bool:
        if code is None:
            out.skipped["no_translation"] += 1
            return False
        cleaned, why = _clean(code, language, min_chars=min_chars, max_chars=max_chars, unparsed=unparsed)
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

    kind, _, where = source.partition(":")
    if source == DEFAULT_DOMAIN and language == "python":
        for path in _cdk_files():
            out.files_read += 1
            module = ".".join(path.parent.parts[path.parent.parts.index("aws_cdk"):])
            for code in literal_blocks(path.read_text(encoding="utf-8", errors="replace")):
                if add(f"{CDK_PACKAGE}:{module}", code):
                    return out
    elif source == DEFAULT_DOMAIN or kind == "npm":
        tablet = _default_tablet() if source == DEFAULT_DOMAIN else Path(where).expanduser()
        out.files_read += 1
        for origin, code in _tablet_examples(tablet, language):
            if add(origin, code, tablet_unparsed):
                return out
    else:
        for name, text in _user_files(source, language):
            out.files_read += 1
            if add(name, text):
                return out
    return out


def _leading_comment(code: str, language: str = "python") -> tuple[str, str]:
    """(the example's leading line-comment text, the code after it)."""
    mark = LINE_COMMENT[language]
    lines = code.splitlines(keepends=True)
    k = 0
    while k < len(lines) and lines[k].lstrip().startswith(mark):
        k += 1
    comment = "".join(line.strip()[len(mark):].strip() + "\n" for line in lines[:k]).strip()
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


def domain_units(examples: list[dict], *, threshold: float = NEAR_DUPLICATE_THRESHOLD,
                 language: str = "python") -> list[dict]:
    """Examples as code units (``id path code docstring group_key``): each example its own "file", its leading
    comment as the docstring of a comment-to-code row; ``group_key`` (the split's key) is shared by near-duplicate
    examples, so an edited copy of a test example is never trained on."""
    keys = domain_group_keys([ex["code"] for ex in examples], threshold=threshold)
    units = []
    for ex, key in zip(examples, keys):
        digest = hashlib.sha256(ex["code"].encode()).hexdigest()[:16]
        comment, _ = _leading_comment(ex["code"], language)
        units.append({"id": f"domain:{digest}", "path": f"{ex['source']}/{digest}", "code": ex["code"],
                      "docstring": comment or None, "group_key": key})
    return units


def without_leading_comment(code: str, language: str = "python") -> str | None:
    """The code a comment-to-code row asks for (None when nothing is left)."""
    return _leading_comment(code, language)[1] or None
