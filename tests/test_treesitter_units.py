"""Function-level units from JavaScript / Java files, and alpha-renaming of those units."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml.codec.treesitter_codec import parse_unit, parse_unit_with_source
from ml.extract.treesitter_units import clean_comment, extract_units
from ml.renaming.treesitter_rename import Renaming, alpha_rename, undo_renaming
from ml.units import normalized_hash

FIXTURES = Path(__file__).parent / "fixtures"


def extract(name: str, language: str):
    path = FIXTURES / language / name
    return extract_units(path.read_text(), str(path), "test", language)


def by_name(extraction):
    return {u.name: u for u in extraction.units}


# -- extraction -------------------------------------------------------------------------------------


def test_js_units_names_and_docstrings():
    ex = extract("sample.js", "javascript")
    units = by_name(ex)
    assert set(units) == {
        "add",
        "greet",
        "walk",
        "Shape.constructor",
        "Shape.create",
        "Shape.area",
        "Shape.onClick",
        "module.exports.sub",
        "api.get",
        "api.put",
        "helperInside",
        "asi",
    }
    assert ex.skipped == {}
    assert units["add"].docstring == "Add two numbers.\n@param {number} a"
    assert units["greet"].docstring == "Greets someone\non two lines."
    assert units["Shape.constructor"].docstring == "The constructor."
    assert units["walk"].docstring == ""
    add = units["add"]
    assert add.code.startswith("function add (a, b) {") and add.code.endswith("}")
    assert (add.start_line, add.end_line) == (8, 10)
    assert add.language == "javascript" and add.source == "test" and add.path.endswith("sample.js")
    assert add.id == normalized_hash(add.code)
    # a method's code is just the method; its inner function expression stays inside it
    assert units["Shape.area"].code.startswith("get area ()")
    assert "helper" not in units
    assert units["greet"].code.startswith("(name) =>")


def test_java_units_names_and_docstrings():
    ex = extract("Sample.java", "java")
    units = by_name(ex)
    assert set(units) == {
        "Sample.add",
        "Sample.Sample",
        "Sample.sum",
        "Sample.Base.hook",
        "Sample.Inner.max",
        "Sample.Color.next",
        "Sample.Greeter.hello",
        "Sample.shifts",
    }
    assert ex.skipped == {"no_body": 2}  # abstract run(), interface greet()
    assert units["Sample.add"].docstring == "Adds a number.\n@param n the number"
    assert units["Sample.sum"].docstring == "Sums a list."
    assert units["Sample.Sample"].docstring == ""
    assert units["Sample.add"].code.startswith("public int add(int n) {")
    assert (units["Sample.add"].start_line, units["Sample.add"].end_line) == (13, 16)
    # the anonymous class's run() stays inside hook()
    assert "public void run()" in units["Sample.Base.hook"].code


@pytest.mark.parametrize(
    "name,language",
    [
        ("sample.js", "javascript"),
        ("broken.js", "javascript"),
        ("minified.min.js", "javascript"),
        ("Sample.java", "java"),
        ("Broken.java", "java"),
    ],
)
def test_every_unit_parses_alone(name, language):
    for unit in extract(name, language).units:
        node = parse_unit(unit.code, language)
        assert not node.has_error


def test_syntax_errors_are_skipped():
    js = extract("broken.js", "javascript")
    assert [u.name for u in js.units] == ["good", "alsoGood"]
    assert js.skipped == {"syntax_error": 1}
    java = extract("Broken.java", "java")
    assert [u.name for u in java.units] == ["Broken.ok", "Broken.alsoOk"]
    assert java.skipped == {"syntax_error": 1}


def test_minified_file():
    units = by_name(extract("minified.min.js", "javascript"))
    assert set(units) == {"a", "e", "H.i", "H.k", "m", "p"}
    assert all(u.start_line == u.end_line == 1 for u in units.values())


def test_oversized_and_bad_input_never_raise():
    text = (FIXTURES / "javascript" / "sample.js").read_text()
    ex = extract_units(text, "x.js", "test", "javascript", max_chars=60)
    assert ex.skipped["oversized"] > 0
    assert all(len(u.code) <= 60 for u in ex.units)
    for junk in ["", "\x00\x01\x02binary\xff", "}}}{{{ ((", "function", "class { void", "\ud800"]:
        for language in ("javascript", "java"):
            result = extract_units(junk, "junk", "test", language)
            assert result.units == []
    assert extract_units("\x00abc", "j", "t", "java").skipped == {"binary": 1}
    with pytest.raises(ValueError):
        extract_units("x", "p", "s", "cobol")


def test_units_are_not_nested():
    code = "function outer () {\n  function inner () { return 1 }\n  return inner()\n}\n"
    code += "const f = function () { const g = () => 1; return g }\n"
    units = extract_units(code, "n.js", "t", "javascript").units
    assert [u.name for u in units] == ["outer", "f"]
    java = "class A { void m() { Runnable r = () -> {}; class L { void n() {} } } }"
    assert [u.name for u in extract_units(java, "A.java", "t", "java").units] == ["A.m"]


def test_js_exports():
    code = (
        "/** exported */\nexport function f (a) { return a }\n"
        "export default function () { return 2 }\nexport const g = async x => x\n"
    )
    units = by_name(extract_units(code, "e.js", "t", "javascript"))
    assert set(units) == {"f", "default", "g"}
    assert units["f"].docstring == "exported" and units["f"].code.startswith("function f")


def test_trailing_comment_is_not_a_docstring():
    code = (
        "x = 1 // trailing\nfunction f () {}\n\n// a\n// b\nfunction g () {}\n/* far */\n\nfunction h () {}"
    )
    units = by_name(extract_units(code, "d.js", "t", "javascript"))
    assert units["f"].docstring == "" and units["g"].docstring == "a\nb" and units["h"].docstring == ""


def test_clean_comment():
    assert clean_comment("/**\n * Hello.\n *   indented\n */") == "Hello.\n  indented"
    assert clean_comment("// one") == "one"
    assert clean_comment("/* plain */") == "plain"


# -- renaming ---------------------------------------------------------------------------------------


def shape(code: str, language: str):
    node, _ = parse_unit_with_source(code, language)
    out, stack = [], [(node, 0)]
    while stack:
        n, depth = stack.pop()
        out.append((depth, n.type))
        stack.extend((c, depth + 1) for c in reversed(n.children))
    return out


def check_renaming(code: str, language: str) -> Renaming:
    r = alpha_rename(code, language)
    assert isinstance(r, Renaming)
    node = parse_unit(r.code, language)
    assert not node.has_error
    assert shape(r.code, language) == shape(code, language)
    assert undo_renaming(r.code, r.mapping, language) == code
    assert len(set(r.mapping.values())) == len(r.mapping)
    assert all(v.startswith("var_") and v not in code for v in r.mapping.values())
    return r


def test_js_renaming():
    code = (
        "function f (a, { b, c: d }, ...rest) {\n"
        "  const [x, y = a] = g(a); let o = { b, k: x.y }\n"
        "  for (const k of rest) { try { h(k) } catch (e) { console.log(e, d) } }\n"
        "  function inner (q) { return q + f(x) }\n"
        "  loop: while (o) { break loop }\n"
        "  return x\n"
        "}"
    )
    r = check_renaming(code, "javascript")
    assert list(r.mapping) == ["f", "a", "d", "rest", "x", "y", "o", "k", "e", "inner", "q"]
    assert r.code.startswith("function var_0 (var_1, { b, c: var_2 }, ...var_3)")
    # property names, shorthand, labels and free names are untouched
    assert "{ b, k: var_4.y }" in r.code and "break loop" in r.code
    for free in ("g(", "h(", "console.log("):
        assert free in r.code
    assert "b" not in r.mapping  # bound through a shorthand pattern: left as it is


def test_js_method_and_arrow_units():
    r = check_renaming(
        "async get (key, fallback) { const v = await this.load(key); return v ?? fallback }", "javascript"
    )
    assert r.mapping == {"key": "var_0", "fallback": "var_1", "v": "var_2"}
    assert "this.load(var_0)" in r.code and r.code.startswith("async get (")
    r = check_renaming("(name) => `hello ${name}`", "javascript")
    assert r.code == "(var_0) => `hello ${var_0}`"
    r = check_renaming("x => ({ x })", "javascript")  # shorthand of a bound name: not renamed
    assert r.mapping == {} and r.code == "x => ({ x })"


def test_java_renaming():
    code = (
        "public int size(int n, List<String> xs) {\n"
        "  int total = 0; for (String s : xs) { total += s.length(); }\n"
        "  try (var in = open()) { } catch (IOException e) { throw e; }\n"
        "  xs.forEach(x -> print(x)); Runnable r = () -> this.size(n - 1, xs);\n"
        "  if (xs instanceof ArrayList a) { total = a.size(); }\n"
        "  out: for (int j = 0; j < n; j++) { break out; }\n"
        "  return size(n - 1, xs) + this.total + other.size() + Math.max(n, total);\n"
        "}"
    )
    r = check_renaming(code, "java")
    assert list(r.mapping) == ["size", "n", "xs", "total", "s", "in", "e", "x", "r", "a", "j"]
    assert r.code.startswith("public int var_0(int var_1, List<String> var_2)")
    assert "this.var_0(var_1 - 1, var_2)" in r.code  # a call of the unit itself
    assert "return var_0(var_1 - 1, var_2)" in r.code
    assert "var_4.length()" in r.code and "a.size()" not in r.code and "var_9.size()" in r.code
    assert "this.total" in r.code and "other.size()" in r.code and "Math.max(var_1, var_3)" in r.code
    assert "break out" in r.code and "print(var_7)" in r.code


def test_existing_placeholders_are_skipped():
    code = "function f (var_0, b) { return var_0 + b }"
    r = check_renaming(code, "javascript")
    assert r.mapping == {"f": "var_1", "var_0": "var_2", "b": "var_3"}
    assert undo_renaming(r.code, r.mapping, "javascript") == code


def test_nothing_to_rename():
    r = alpha_rename("void run() { System.out.println(1); }", "java")
    assert r.mapping == {"run": "var_0"}
    r = alpha_rename("get x () { return this._x }", "javascript")
    assert r.mapping == {} and r.code == "get x () { return this._x }"
    assert undo_renaming(r.code, {}, "javascript") == r.code


@pytest.mark.parametrize(
    "name,language",
    [
        ("sample.js", "javascript"),
        ("minified.min.js", "javascript"),
        ("Sample.java", "java"),
        ("Broken.java", "java"),
        ("broken.js", "javascript"),
    ],
)
def test_renaming_fixture_units(name, language):
    for unit in extract(name, language).units:
        check_renaming(unit.code, language)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/lib/node_modules/npm"), reason="npm installation not found")
def test_renaming_npm_sample():
    from test_treesitter_codec import npm_files

    count = 0
    for path, text in npm_files(150):
        for unit in extract_units(text, path, "corpus", "javascript").units:
            count += 1
            check_renaming(unit.code, "javascript")
    assert count > 100


@pytest.mark.slow
def test_renaming_jdk_sample():
    from test_treesitter_codec import jdk_files, jdk_zip

    if jdk_zip() is None:
        pytest.skip("JDK src.zip not found")
    count = 0
    for path, text in jdk_files(0):
        for unit in extract_units(text, path, "corpus", "java").units:
            count += 1
            check_renaming(unit.code, "java")
    assert count > 500
