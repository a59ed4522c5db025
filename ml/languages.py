"""The one place a language slice is registered: parser/extractor, codec, renamer, validity judge,
grammar constraint (where one exists), default source, globs.

Adding a slice means adding one ``LanguageSpec`` to ``LANGUAGES``; partitions, assets, the sensor and
the benchmarks all read this table.
"""

from __future__ import annotations

import shutil
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ml.codec.base import Codec
from ml.extract import Extraction
from ml.units import SourceSpec


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    globs: tuple[str, ...]
    excludes: tuple[str, ...]
    default_source: Callable[[], SourceSpec]
    extractor: Callable[..., Extraction]  # (text, path, source, language, max_chars) -> Extraction
    codec_factory: Callable[[], Codec]
    renamer: Callable[[str], object]  # code -> Renaming(code, mapping)
    # (ast_text, mode="compact") -> ml.codec.judge.Judged: does a generated sequence decode to a
    # program the language accepts (valid), and to what source and productions.
    judge: Callable[..., Any]
    # (tokenizer, vocab_size) -> the grammar automaton whose masks admit only trees the judge accepts (built once:
    # its masks are cached per state); None where the language has none yet (no constrained metrics are reported).
    grammar_automaton: Callable[[Any, int], Any] | None = None
    # True where every tree the grammar lets finish is valid by construction (Python: the automaton follows the
    # codec's ASDL tables and compile()'s rules), so the constrained valid rates check the automaton and measure no
    # model. False where only decoding is guaranteed and the re-parse is measured (JS/Java: productions seen in
    # real units, docs/ast_first.md).
    grammar_guarantees_validity: bool = False
    # The code a docstring describes (Phase 2 target): Python drops the docstring from the body;
    # JS/Java leading comments sit outside the unit already. None: nothing left to predict.
    nl_target: Callable[[str], str | None] = lambda code: code

    @property
    def codec(self) -> Codec:
        return _codec(self.name)

    @property
    def grammar_factory(self) -> Callable[[Any, int, int], Callable[[list[int]], Any]] | None:
        """(tokenizer, vocab_size, max_new_tokens) -> (prompt lengths -> logits processor); None without a grammar."""
        if self.grammar_automaton is None:
            return None
        automaton = self.grammar_automaton
        return lambda tokenizer, vocab_size, max_new_tokens: grammar_processors(
            automaton(tokenizer, vocab_size), tokenizer, vocab_size, max_new_tokens)


def grammar_processors(automaton, tokenizer, vocab_size: int, max_new_tokens: int) -> Callable[[list[int]], Any]:
    """prompt lengths -> the logits processor that walks ``automaton`` from where each row's tree starts."""
    from ml.constrained.python_grammar import GrammarLogitsProcessor

    return lambda prompt_lengths: GrammarLogitsProcessor(
        automaton, prompt_lengths, tokenizer.eos_token_id, vocab_size, max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id)


def _python_stdlib() -> SourceSpec:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not stdlib.is_dir():
        return SourceSpec("missing", "", note=f"Python standard library not found at {stdlib}")
    return SourceSpec("dir", str(stdlib))


def _npm_installation() -> SourceSpec:
    node = shutil.which("node")
    candidates = []
    if node:
        prefix = Path(node).resolve().parent.parent
        candidates.append(prefix / "lib" / "node_modules" / "npm")
    candidates.append(Path("/usr/lib/node_modules/npm"))
    candidates.append(Path("/usr/local/lib/node_modules/npm"))
    for c in candidates:
        if c.is_dir():
            return SourceSpec("dir", str(c))
    return SourceSpec("missing", "", note="no npm installation found next to Node.js (is Node.js installed?)")


def _jdk_src_zip() -> SourceSpec:
    import os

    homes = []
    if os.environ.get("JAVA_HOME"):
        homes.append(Path(os.environ["JAVA_HOME"]))
    javac = shutil.which("javac") or shutil.which("java")
    if javac:
        homes.append(Path(javac).resolve().parent.parent)
    # Some distributions ship lib/src.zip as a dangling link; any installed JDK's sources will do.
    homes += sorted(Path("/usr/lib/jvm").glob("*/"))
    for home in homes:
        for candidate in (home / "lib" / "src.zip", home / "src.zip"):
            if candidate.is_file():
                return SourceSpec("zip", str(candidate))
    return SourceSpec(
        "missing", "", note="the JDK's lib/src.zip was not found (install a JDK with sources, or set JAVA_HOME)"
    )


def _python_extract(text, path, source, language="python", max_chars=20000):
    from ml.extract.python_units import extract_units

    return extract_units(text, path, source, language, max_chars)


def _ts_extract(text, path, source, language, max_chars=20000):
    from ml.extract.treesitter_units import extract_units

    return extract_units(text, path, source, language, max_chars)


def _python_nl_target(code):
    from ml.extract.python_units import without_docstring

    return without_docstring(code)


def _python_codec():
    from ml.codec.python_ast import PythonCodec

    return PythonCodec()


def _python_rename(code):
    from ml.renaming.python_rename import alpha_rename

    return alpha_rename(code)


def _python_judge(ast_text, mode="compact"):
    from ml.codec.judge import judge_python

    return judge_python(ast_text, mode)


def _python_automaton(tokenizer, vocab_size):
    from ml.constrained.python_grammar import PythonAstGrammar

    return PythonAstGrammar(tokenizer, vocab_size=vocab_size)


def _ts_automaton(language):
    def make(tokenizer, vocab_size):
        from ml.constrained.treesitter_grammar import TreeSitterGrammar

        return TreeSitterGrammar(tokenizer, language, vocab_size=vocab_size)

    return make


def _ts_codec(language):
    def make():
        from ml.codec.treesitter_codec import TreeSitterCodec

        return TreeSitterCodec(language)

    return make


def _ts_rename(language):
    def rename(code):
        from ml.renaming.treesitter_rename import alpha_rename

        return alpha_rename(code, language)

    return rename


def _ts_judge(language):
    def judge(ast_text, mode="compact"):
        from ml.codec.judge import judge_treesitter

        return judge_treesitter(_codec(language), language, ast_text, mode)

    return judge


LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        name="python",
        globs=("**/*.py",),
        excludes=("site-packages/*", "*/site-packages/*"),
        default_source=_python_stdlib,
        extractor=_python_extract,
        codec_factory=_python_codec,
        renamer=_python_rename,
        judge=_python_judge,
        grammar_automaton=_python_automaton,
        grammar_guarantees_validity=True,
        nl_target=_python_nl_target,
    ),
    "javascript": LanguageSpec(
        name="javascript",
        globs=("**/*.js", "**/*.mjs", "**/*.cjs"),
        # Bundles and minified builds are machine output; very long lines are caught by the filter too.
        excludes=("*.min.js", "*/dist/*", "*bundle*.js"),
        default_source=_npm_installation,
        extractor=_ts_extract,
        codec_factory=_ts_codec("javascript"),
        renamer=_ts_rename("javascript"),
        judge=_ts_judge("javascript"),
        grammar_automaton=_ts_automaton("javascript"),
    ),
    "java": LanguageSpec(
        name="java",
        globs=("**/*.java",),
        excludes=(),
        default_source=_jdk_src_zip,
        extractor=_ts_extract,
        codec_factory=_ts_codec("java"),
        renamer=_ts_rename("java"),
        judge=_ts_judge("java"),
        grammar_automaton=_ts_automaton("java"),
    ),
}

SLICES: list[str] = list(LANGUAGES)


@cache
def _codec(name: str) -> Codec:
    return LANGUAGES[name].codec_factory()


def get_language(name: str) -> LanguageSpec:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise KeyError(f"unknown language slice {name!r}; registered: {', '.join(LANGUAGES)}") from None
