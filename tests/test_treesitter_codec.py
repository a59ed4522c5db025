"""The tree-sitter codec (JavaScript, Java): reversibility, token format, errors, corpus sweep."""

from __future__ import annotations

import glob
import os
import random
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml.codec.base import DecodeError
from ml.codec.tokens import is_raw_opener, is_structural, text_to_tokens, tokens_to_text
from ml.codec.treesitter_codec import TreeSitterCodec, get_parser, parse_unit
from ml.extract.treesitter_units import extract_units

FIXTURES = Path(__file__).parent / "fixtures"
LANG_OF = {".js": "javascript", ".java": "java"}


def fixture_units(language: str):
    folder = FIXTURES / language
    units = []
    for path in sorted(folder.iterdir()):
        if LANG_OF.get(path.suffix) == language:
            units.extend(extract_units(path.read_text(), str(path), "test", language).units)
    return units


def all_fixture_units():
    return [(lang, u) for lang in ("javascript", "java") for u in fixture_units(lang)]


@pytest.fixture(scope="module", params=["javascript", "java"])
def codec(request):
    return TreeSitterCodec(request.param)


@pytest.mark.parametrize("mode", ["compact", "verbose"])
@pytest.mark.parametrize("language", ["javascript", "java"])
def test_fixture_units_round_trip(language, mode):
    codec = TreeSitterCodec(language)
    units = fixture_units(language)
    assert len(units) >= 8
    for unit in units:
        tokens = codec.encode(unit.code, mode)
        assert codec.verify(unit.code, tokens, mode), unit.name
        decoded = codec.decode(tokens, mode)
        parse_unit(decoded, language)  # parses cleanly alone
        # the codec is idempotent on its own output
        assert codec.encode(decoded, mode) == tokens


@pytest.mark.parametrize("language", ["javascript", "java"])
def test_token_format(language):
    codec = TreeSitterCodec(language)
    vocab = set(codec.vocabulary())
    for unit in fixture_units(language):
        compact = codec.encode(unit.code, "compact")
        verbose = codec.encode(unit.code, "verbose")
        assert not any(t == "<open>" or t.startswith("<field:") for t in compact)
        assert any(t.startswith("<field:") for t in verbose) and "<open>" in verbose
        assert len(verbose) > 1.3 * len(compact)
        assert verbose[0] == "<open>" and compact[0] == "<N:" + parse_unit(unit.code, language).type + ">"
        assert verbose.count("<close>") == sum(
            1
            for i, t in enumerate(verbose)
            if t.startswith("<n:") and i + 1 < len(verbose) and is_structural(verbose[i + 1])
        )
        for tokens in (compact, verbose):
            for i, tok in enumerate(tokens):
                if is_structural(tok):
                    assert tok in vocab or tok.startswith("<t:"), tok
                    assert tok.startswith(("<n:", "<N:", "<t:", "<field:", "<open>", "<close>", "<nl>", "<empty>",
                                           "<var>"))
                else:
                    assert "<" not in tok
                    if tokens is verbose:  # a verbose payload always follows a named leaf opener
                        assert tokens[i - 1].startswith("<n:")
            # the text form a language model reads gives the same tokens back
            assert text_to_tokens(tokens_to_text(tokens)) == tokens
        # verbose without <open> and field tokens is the previous compact format: every leaf, every <close>
        assert len([t for t in verbose if t != "<open>" and not t.startswith("<field:")]) > len(compact)


def test_compact_leaves_out_what_the_grammar_implies():
    js = TreeSitterCodec("javascript")
    tokens = js.encode("function f (a) { return a.b + 1 }")
    # keywords, punctuation and the identifier leaf types are implied; the operator is not
    assert "<t:return>" not in tokens and "<t:{>" not in tokens and "<t:.>" not in tokens
    assert "<t:+>" in tokens and "<n:identifier>" not in tokens and "b" in tokens
    # an unusual gap is written: JavaScript without a semicolon where one is usual, an empty arguments list
    for code in ("function f () { let a = 1; a = 2; g(); return }", "function f () { let a = 1\n a = 2\n g()\n}"):
        tokens = js.encode(code)
        assert js.verify(code, tokens, strict=True)
        assert js.encode(js.decode(tokens)) == tokens
    java = TreeSitterCodec("java")
    code = "int f(int a) { if (a > 0) { return this.a; } else return -a; }"
    tokens = java.encode(code)
    assert java.verify(code, tokens, strict=True) and "<t:;>" not in tokens and "<t:if>" not in tokens

def test_js_newlines_are_kept_for_asi():
    codec = TreeSitterCodec("javascript")
    code = "function f (a) {\n  let b = a\n  ++b\n  return a\n    + b\n}"
    tokens = codec.encode(code)
    assert "<nl>" in tokens
    decoded = codec.decode(tokens)
    assert "\n" in decoded and codec.verify(code, tokens)
    # without the newlines the statements would parse differently
    flat = [t for t in tokens if t != "<nl>"]
    assert not codec.verify(code, flat)


def test_java_has_no_newline_tokens_but_keeps_line_comments():
    codec = TreeSitterCodec("java")
    code = "int f(int a) {\n  // note\n  return a; // trailing\n}"
    tokens = codec.encode(code)
    assert "<nl>" not in tokens
    assert "<n:line_comment>" in tokens
    assert codec.verify(code, tokens)
    assert "// note\n" in codec.decode(tokens)


def test_strings_templates_and_regex_stay_contiguous():
    js = TreeSitterCodec("javascript")
    code = "function f (x) { return [`a ${x}b\\n`, 'q\\'w', /a[b]+/gi, \"<<=\"] }"
    tokens = js.encode(code)
    assert js.verify(code, tokens)
    decoded = js.decode(tokens)
    assert "`a ${ x }b\\n`" in decoded and "/a[b]+/gi" in decoded and "'q\\'w'" in decoded
    assert "<t:%3C%3C=>" not in tokens and "\\l\\l=" in tokens  # '<' escaped in string payloads
    java = TreeSitterCodec("java")
    code = 'String f() { char c = \'"\'; return "a\\tb" + """\n  x\n  """ + c; }'
    assert java.verify(code, java.encode(code))
    assert java.verify(code, java.encode(code, "verbose"), "verbose")


def test_java_text_block_hidden_escapes_are_kept():
    """In a text block, ``\\<newline>`` (line continuation) and escapes such as ``\\0`` lex as hidden
    tokens: no node covers them. Dropping them merged the fragments around a continuation
    (HtmlConfiguration.detectJSModule, XmlText.readInput in the JDK) or changed the string."""
    java = TreeSitterCodec("java")
    continuation = 'String f() { return """\n    a \\\n    b\\\n    """; }'
    others = 'String f() { return """\n    a\\0\n    b\\q\n    """; }'
    for code in (continuation, others):
        for mode in ("compact", "verbose"):
            tokens = java.encode(code, mode)
            assert java.verify(code, tokens, mode)
            decoded = java.decode(tokens, mode)
            assert java.encode(decoded, mode) == tokens
            assert text_to_tokens(tokens_to_text(tokens)) == tokens
    tokens = java.encode(continuation)
    assert tokens.count("<t:\\%0A>") == 2
    assert '"""\n    a \\\n    b\\\n    """' in java.decode(tokens)
    assert '"""\n    a\\0\n    b\\q\n    """' in java.decode(java.encode(others))


def test_anonymous_operators_are_struct_safe():
    js = TreeSitterCodec("javascript")
    tokens = js.encode("function f (a) { a <<= 2; return a >>> 1 }")
    assert "<t:%3C%3C=>" in tokens and "<t:%3E%3E%3E>" in tokens
    assert all(not is_raw_opener(t) or t.startswith("<n:") for t in tokens)


def test_parse_unit_wraps_methods(codec):
    if codec.language == "javascript":
        assert parse_unit("get x () { return 1 }", "javascript").type == "method_definition"
        assert parse_unit("foo ()\n{ return 1 }", "javascript").type == "method_definition"
        assert parse_unit("function g () {}", "javascript").type == "function_declaration"
        assert parse_unit("(a) => a + 1", "javascript").type == "arrow_function"
        assert parse_unit("function () { return 1 }", "javascript").type == "function_expression"
        bad = "function (a { }"
    else:
        assert parse_unit("int f() { return 1; }", "java").type == "method_declaration"
        assert parse_unit("Foo(int a) { this.a = a; }", "java").type == "constructor_declaration"
        bad = "int f( { }"
    with pytest.raises(DecodeError):
        parse_unit(bad, codec.language)
    with pytest.raises(ValueError):
        parse_unit("x = 1; y = 2;", codec.language)
    assert get_parser(codec.language) is get_parser(codec.language)


def test_verify_is_false_on_wrong_tokens(codec):
    units = fixture_units(codec.language)
    a, b = units[0], units[1]
    assert not codec.verify(a.code, codec.encode(b.code))
    assert not codec.verify(a.code, ["<close>"])
    assert not codec.verify(a.code, [])
    assert not codec.verify("not code at all (", codec.encode(a.code))
    tokens = codec.encode(a.code)
    assert not codec.verify(a.code, tokens, "verbose")  # compact tokens read as verbose


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        ["<close>"],
        ["payload"],
        ["<n:identifier>"],
        ["<bogus>"],
        ["<n:formal_parameters>", "<t:(>", "<t:)>"],  # unclosed
        ["<n:formal_parameters>", "<t:(>", "<t:)>", "<close>", "<close>"],
        ["<n:formal_parameters>", "<t:(>", "<t:)>", "<close>", "<t:;>"],
        ["<field:name>", "<n:identifier>", "x"],
        ["<open>", "<n:identifier>", "x"],
    ],
)
def test_decode_rejects_malformed(codec, tokens):
    with pytest.raises(DecodeError):
        codec.decode(tokens, "compact")
    with pytest.raises(DecodeError):
        codec.decode(tokens, "verbose")


def test_decode_checks_verbose_markers():
    js = TreeSitterCodec("javascript")
    code = "function f (a) { return a }"
    verbose = js.encode(code, "verbose")
    compact = js.encode(code, "compact")
    with pytest.raises(DecodeError):
        js.decode(verbose, "compact")
    with pytest.raises(DecodeError):
        js.decode(compact, "verbose")
    with pytest.raises(DecodeError):
        TreeSitterCodec("java").decode(["<nl>", "<n:identifier>", "x"])
    with pytest.raises(ValueError):
        js.decode(compact, "pretty")


def test_vocabulary(codec):
    vocab = codec.vocabulary()
    assert vocab == codec.vocabulary() == TreeSitterCodec(codec.language).vocabulary()
    assert len(vocab) == len(set(vocab))
    assert vocab[:2] == ["<open>", "<close>"]
    assert ("<nl>" in vocab) == (codec.language == "javascript")
    assert "<field:name>" in vocab and "<n:identifier>" in vocab and "<t:%3C%3C=>" in vocab
    assert all(is_structural(t) and " " not in t for t in vocab)
    seen = set()
    for unit in fixture_units(codec.language):
        for mode in ("compact", "verbose"):
            seen.update(t for t in codec.encode(unit.code, mode) if is_structural(t))
    assert seen <= set(vocab)


def test_unknown_language():
    with pytest.raises(ValueError):
        TreeSitterCodec("cobol")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_never_crashes_on_mangled_tokens(data):
    """Cut / shuffled / spliced token lists: decode returns text or raises DecodeError, verify is a bool."""
    pool = all_fixture_units()
    language, unit = data.draw(st.sampled_from(pool))
    codec = TreeSitterCodec(language)
    mode = data.draw(st.sampled_from(["compact", "verbose"]))
    tokens = codec.encode(unit.code, mode)
    i = data.draw(st.integers(0, len(tokens)))
    j = data.draw(st.integers(i, len(tokens)))
    extra = data.draw(st.lists(st.sampled_from(codec.vocabulary() + ["x", "1", ""]), max_size=3))
    mangled = tokens[:i] + extra + tokens[j:]
    try:
        out = codec.decode(mangled, mode)
        assert isinstance(out, str)
    except DecodeError:
        pass
    assert codec.verify(unit.code, mangled, mode) in (True, False)
    if mangled == tokens:
        assert codec.verify(unit.code, mangled, mode)


# -- corpus sweep ---------------------------------------------------------------------------------

NPM_ROOT = "/usr/lib/node_modules/npm"
JDK_SRC_ZIPS = [
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/src.zip",
    "/usr/lib/jvm/openjdk-17/lib/src.zip",
    *sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip")),
]


def npm_files(limit: int | None = None):
    paths = sorted(glob.glob(f"{NPM_ROOT}/**/*.js", recursive=True))
    if limit is not None:
        random.Random(0).shuffle(paths)
        paths = paths[:limit]
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if any(len(line) > 1000 for line in text.splitlines()):
            continue  # minified
        yield path, text


def jdk_zip() -> str | None:
    for path in JDK_SRC_ZIPS:
        if os.path.isfile(path):  # a dangling symlink does not count
            return path
    return None


def jdk_files(others: int = 300):
    with zipfile.ZipFile(jdk_zip()) as zf:
        names = [n for n in zf.namelist() if n.endswith(".java")]
        util = sorted(n for n in names if n.startswith("java.base/java/util/") and n.count("/") == 3)
        rest = sorted(set(names) - set(util))
        random.Random(0).shuffle(rest)
        for name in util + rest[:others]:
            yield name, zf.read(name).decode("utf-8", "replace")


def sweep(language: str, files) -> tuple[int, list[str]]:
    codec = TreeSitterCodec(language)
    count, failures = 0, []
    for path, text in files:
        for unit in extract_units(text, path, "corpus", language).units:
            count += 1
            for mode in ("compact", "verbose"):
                if not codec.verify(unit.code, codec.encode(unit.code, mode), mode, strict=True):
                    failures.append(f"{path}:{unit.start_line} {unit.name} ({mode})")
    return count, failures


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(NPM_ROOT), reason="npm installation not found")
def test_npm_corpus_round_trips():
    limit = None if os.environ.get("ASTFORGE_FULL_CORPUS") else 400
    count, failures = sweep("javascript", npm_files(limit))
    assert count > 500
    assert failures == []


@pytest.mark.slow
@pytest.mark.skipif(jdk_zip() is None, reason="JDK src.zip not found")
def test_jdk_corpus_round_trips():
    others = 300 if os.environ.get("ASTFORGE_FULL_CORPUS") else 100
    count, failures = sweep("java", jdk_files(others))
    assert count > 1000
    assert failures == []
