"""The rewrite-family catalog and the task miner: every family rewrites a hand-written example exactly as
expected, near misses stay untouched, the split is the family's (train / dev / test, at least one dev and one test
family per language, no family in two splits, dev and test instructions that do not give the answer away), and
mining is deterministic and counts what it skips."""

from __future__ import annotations

import collections
import re

import jsonschema
import pytest

from ml.autocomplete.metrics import syntax_valid
from ml.srl.apply_rule import apply
from ml.srl.families import FAMILIES, LANGUAGES, SPLITS, RewriteFamily, families_for, get_family
from ml.srl.tasks import MinedTasks, mine_tasks, split_counts, task_id
from ml.srl.trace import ACTION_SCHEMA

# family -> (code, expected rewrite); one example per family in the catalog
EXAMPLES: dict[str, tuple[str, str]] = {
    # python
    "py_len_eq_zero": ("def f(xs):\n    return len(xs) == 0\n", "def f(xs):\n    return not xs\n"),
    "py_not_in": ("def f(k, d):\n    if not k in d:\n        return 1\n",
                  "def f(k, d):\n    if k not in d:\n        return 1\n"),
    "py_not_is": ("def f(a, b):\n    return not a is b\n", "def f(a, b):\n    return a is not b\n"),
    "py_get_none": ("def f(d, k):\n    return d.get(k, None)\n", "def f(d, k):\n    return d.get(k)\n"),
    "py_type_eq": ("def f(a, b):\n    return type(a) == type(b)\n", "def f(a, b):\n    return type(a) is type(b)\n"),
    "py_join_listcomp": ("def f(xs):\n    return ', '.join([str(x) for x in xs])\n",
                         "def f(xs):\n    return ', '.join(str(x) for x in xs)\n"),
    "py_super_old": ("def __init__(self, x):\n    super(Foo, self).__init__(x)\n",
                     "def __init__(self, x):\n    super().__init__(x)\n"),
    "py_aug_add": ("def f(n):\n    n = n + 1\n    return n\n", "def f(n):\n    n += 1\n    return n\n"),
    "py_slice_zero": ("def f(s, n):\n    return s[0:n], s[0:n:2]\n", "def f(s, n):\n    return s[:n], s[0:n:2]\n"),
    "py_class_name": ("def __repr__(self):\n    return self.__class__.__name__\n",
                      "def __repr__(self):\n    return type(self).__name__\n"),
    "py_encode_utf8": ("def f(s):\n    return s.encode('utf-8'), s.encode('latin-1')\n",
                       "def f(s):\n    return s.encode(), s.encode('latin-1')\n"),
    "py_sorted_keys": ("def f(d):\n    return sorted(d.keys())\n", "def f(d):\n    return sorted(d)\n"),
    "py_in_list_tuple": ("def f(x):\n    return x in ['a', 'b']\n", "def f(x):\n    return x in ('a', 'b')\n"),
    "py_not_len": ("def f(xs):\n    if not len(xs):\n        return 0\n",
                   "def f(xs):\n    if not xs:\n        return 0\n"),
    "py_aug_sub": ("def f(n):\n    n = n - 2\n    return n\n", "def f(n):\n    n -= 2\n    return n\n"),
    "py_keys_list": ("def f(d):\n    return list(d.keys())\n", "def f(d):\n    return list(d)\n"),
    "py_decode_utf8": ('def f(b):\n    return b.decode("UTF-8")\n', "def f(b):\n    return b.decode()\n"),
    # javascript
    "js_arrow_return": ("(x) => {\n  return x + 1\n}", "(x) => x + 1"),
    "js_arrow_single_paren": ("(x) => x * 2", "x => x * 2"),
    "js_length_eq_zero": ("function f(a) {\n  return a.length === 0\n}", "function f(a) {\n  return !a.length\n}"),
    "js_assign_or": ("function f(o) {\n  o = o || {}\n  return o\n}", "function f(o) {\n  o ||= {}\n  return o\n}"),
    "js_replace_g": ("function f(s) {\n  return s.replace(/a/g, 'b').replace(/c/, 'd')\n}",
                     "function f(s) {\n  return s.replaceAll(/a/g, 'b').replace(/c/, 'd')\n}"),
    "js_or_empty_obj": ("function f(o) {\n  const { a } = o || {}\n  return a\n}",
                        "function f(o) {\n  const { a } = o ?? {}\n  return a\n}"),
    "js_or_str": ("function f(s) {\n  return (s || '').trim()\n}", "function f(s) {\n  return (s ?? '').trim()\n}"),
    "js_has_own_call": ("function f(o, k) {\n  return Object.prototype.hasOwnProperty.call(o, k)\n}",
                        "function f(o, k) {\n  return Object.hasOwn(o, k)\n}"),
    "js_map_spread": ("function f(s) {\n  return [...s].map(x => x * 2)\n}",
                      "function f(s) {\n  return Array.from(s, x => x * 2)\n}"),
    "js_template_string": ("function f(x) {\n  return `${x}`\n}", "function f(x) {\n  return String(x)\n}"),
    "js_null_or_undef": ("function f(v) {\n  return v === null || v === undefined\n}",
                         "function f(v) {\n  return v == null\n}"),
    "js_date_now": ("function f() {\n  return new Date().getTime()\n}", "function f() {\n  return Date.now()\n}"),
    "js_or_empty_arr": ("function f(a) {\n  return [...(a || [])]\n}", "function f(a) {\n  return [...(a ?? [])]\n}"),
    "js_double_neg": ("function f(x) {\n  return !!x\n}", "function f(x) {\n  return Boolean(x)\n}"),
    "js_split_join": ("function f(p) {\n  return p.split('-').join('_')\n}",
                      "function f(p) {\n  return p.replaceAll('-', '_')\n}"),
    "js_has_own": ("function f(o) {\n  return o.hasOwnProperty('x')\n}",
                   "function f(o) {\n  return Object.hasOwn(o, 'x')\n}"),
    # java
    "java_var_new": ("void f() {\n    Foo f = new Foo(1);\n    f.run();\n}",
                     "void f() {\n    var f = new Foo(1);\n    f.run();\n}"),
    "java_var_cast": ("void f(Object o) {\n    Foo f = (Foo) o;\n    f.run();\n}",
                      "void f(Object o) {\n    var f = (Foo) o;\n    f.run();\n}"),
    "java_require_non_null_block": (
        "void f(Object o) {\n    if (o == null) {\n        throw new NullPointerException();\n    }\n    use(o);\n}",
        "void f(Object o) {\n    Objects.requireNonNull(o);\n    use(o);\n}"),
    "java_return_parens": ("int f(int a) {\n    return (a + 1);\n}", "int f(int a) {\n    return a + 1;\n}"),
    "java_aug_add": ("int f(int a, int b) {\n    a = a + b;\n    return a;\n}",
                     "int f(int a, int b) {\n    a += b;\n    return a;\n}"),
    "java_plus_one": ("int f(int a) {\n    a += 1;\n    return a;\n}", "int f(int a) {\n    a++;\n    return a;\n}"),
    "java_string_format": ('String f(int x) {\n    return String.format("%d items", x);\n}',
                           'String f(int x) {\n    return "%d items".formatted(x);\n}'),
    "java_length_eq_zero": ("boolean f(String s) {\n    return s.length() == 0;\n}",
                            "boolean f(String s) {\n    return s.isEmpty();\n}"),
    "java_integer_valueof": ("Integer f(int i) {\n    return new Integer(i);\n}",
                             "Integer f(int i) {\n    return Integer.valueOf(i);\n}"),
    "java_toarray_zero": ("String[] f(List<String> l) {\n    return l.toArray(new String[l.size()]);\n}",
                          "String[] f(List<String> l) {\n    return l.toArray(new String[0]);\n}"),
    "java_string_valueof": ('String f(int i) {\n    return "" + i;\n}',
                            "String f(int i) {\n    return String.valueOf(i);\n}"),
    "java_diamond": ("List<String> f() {\n    return new ArrayList<String>();\n}",
                     "List<String> f() {\n    return new ArrayList<>();\n}"),
    "java_var_new_array": ("int f(int n) {\n    int[] a = new int[n];\n    return a.length;\n}",
                           "int f(int n) {\n    var a = new int[n];\n    return a.length;\n}"),
    "java_require_non_null": (
        "void f(Object o) {\n    if (o == null)\n        throw new NullPointerException();\n    use(o);\n}",
        "void f(Object o) {\n    Objects.requireNonNull(o);\n    use(o);\n}"),
    "java_aug_sub": ("int f(int a, int b) {\n    a = a - b;\n    return a;\n}",
                     "int f(int a, int b) {\n    a -= b;\n    return a;\n}"),
    "java_double_parens": ("boolean f(int a) {\n    return ((a > 0)) && a < 9;\n}",
                           "boolean f(int a) {\n    return (a > 0) && a < 9;\n}"),
}

# Code a family must leave alone: ast-grep's matching ignores trailing children (an else branch, an anonymous
# class body, a second array dimension), so these are the guards in the catalog.
NEAR_MISSES: list[tuple[str, str]] = [
    ("py_slice_zero", "def f(s, n):\n    return s[0:n:2]\n"),
    ("py_encode_utf8", "def f(s):\n    return s.encode('ascii')\n"),
    ("py_aug_add", "def f(n, m):\n    n = n + m\n"),
    ("js_arrow_return", "() => { return { a: 1 } }"),
    ("js_arrow_single_paren", "({ a }) => a"),
    ("js_replace_g", "function f(s) {\n  return s.replace(/a/, 'b')\n}"),
    ("js_or_empty_obj", "function f(a, b) {\n  return a || b || {}\n}"),
    ("js_template_string", "function f(x) {\n  return tag`${x}`\n}"),
    ("js_split_join", "function f(s) {\n  return s.split(/,/).join(';')\n}"),
    ("java_var_new", "void f() {\n    Runnable r = new Runnable() { public void run() {} };\n}"),
    ("java_diamond", "Object f() {\n    return new Box<String>() { };\n}"),
    ("java_var_new_array", "void f(int k) {\n    short[][] r = new short[k][];\n}"),
    ("java_length_eq_zero", "public boolean isEmpty() {\n    return this.length() == 0;\n}"),
    ("java_require_non_null_block",
     "void f(Object o) {\n    if (o == null) { throw new NullPointerException(); } else { g(); }\n}"),
    ("java_require_non_null", "void f(Object o) {\n    if (o == null) throw new NullPointerException(); else g();\n}"),
]


# --- the catalog -------------------------------------------------------------------------------------------------


def test_every_family_has_an_example():
    assert set(EXAMPLES) == {f.name for f in FAMILIES}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_family_rewrites_its_example(name):
    family = get_family(name)
    code, expected = EXAMPLES[name]
    assert syntax_valid(code, family.language)
    rewritten, matches = apply(code, family.language, family.action())
    assert matches >= 1
    assert rewritten != code
    assert syntax_valid(rewritten, family.language)
    assert rewritten == expected


@pytest.mark.parametrize(("name", "code"), NEAR_MISSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NEAR_MISSES)])
def test_family_leaves_near_misses_alone(name, code):
    family = get_family(name)
    assert syntax_valid(code, family.language)
    assert apply(code, family.language, family.action()) == (code, 0)


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_size_per_language(language):
    assert len(families_for(language)) >= 14
    assert len(families_for(language, "test")) >= 4
    assert len(families_for(language, "dev")) >= 2  # the explicit assignment guarantees a dev split to tune on
    assert len(families_for(language, "train")) >= 7
    assert sum(len(families_for(language, s)) for s in SPLITS) == len(families_for(language))


def _fix_template(fix: str) -> re.Pattern:
    """The fix as a pattern over code in an instruction: a metavariable stands for any identifier or list of them."""
    parts = re.split(r"(\$\$\$[A-Z_]+|\$[A-Z_]+)", fix)
    body = "".join(r"[\w\s,.'\"]*" if p.startswith("$$$") else r"[A-Za-z_]\w*" if p.startswith("$") else re.escape(p)
                   for p in parts)
    return re.compile(body)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.split != "train"], ids=lambda f: f.name)
def test_dev_and_test_instructions_do_not_quote_the_answer(family):
    """An instruction may show the code to change, not the code it becomes: that would put the answer (the fix) in
    the prompt of a task that measures whether the student finds it."""
    for quoted in re.findall(r"`([^`]+)`", family.instruction):
        assert not _fix_template(family.fix).fullmatch(quoted), (family.name, quoted)
    assert "becomes" not in family.instruction, family.name


def test_the_answer_check_catches_a_quoted_fix():
    leaky = "Replace emptiness checks written as `not len(x)` with `not x`."
    assert any(_fix_template("not $A").fullmatch(q) for q in re.findall(r"`([^`]+)`", leaky))
    assert _fix_template("$A.replaceAll($R, $B)").fullmatch("s.replaceAll(r, b)")
    assert not _fix_template("$A ?? []").fullmatch("a || []")


def test_catalog_fields():
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    for f in FAMILIES:
        assert f.language in LANGUAGES and f.split in SPLITS, f.name
        # the instruction is for the student: plain English, no rule syntax to copy
        assert "$" not in f.instruction and "pattern" not in f.instruction.lower(), f.name
        assert f.rationale.strip() and "\n" not in f.rationale, f.name
        assert f.rule.get("pattern"), f.name


def test_action_shape():
    plain = get_family("py_get_none")
    assert plain.action() == {"rule": {"pattern": "$D.get($K, None)"}, "fix": "$D.get($K)"}
    constrained = get_family("py_encode_utf8")
    assert set(constrained.action()) == {"rule", "fix", "constraints"}
    assert constrained.action()["constraints"] == constrained.constraints
    for f in FAMILIES:
        jsonschema.validate(f.action(), ACTION_SCHEMA)
        assert ("constraints" in f.action()) == bool(f.constraints)


def test_action_is_a_copy():
    family = get_family("js_or_empty_obj")
    action = family.action()
    action["rule"]["not"]["inside"]["kind"] = "edited"
    action["constraints"]["A"] = {}
    assert family.action()["rule"]["not"]["inside"]["kind"] == "binary_expression"
    assert family.action()["constraints"]["A"] == {"not": {"kind": "binary_expression"}}


def test_lookup():
    assert get_family("java_diamond").language == "java"
    assert {f.name for f in families_for("python", "test")} <= {f.name for f in families_for("python")}
    assert families_for("cobol") == []
    with pytest.raises(KeyError, match="unknown rewrite family 'nope'"):
        get_family("nope")
    assert len(set(FAMILIES)) == len(FAMILIES)  # hashable despite the dict fields


# --- the miner ---------------------------------------------------------------------------------------------------


def _unit(uid: str, code: str, language: str = "python") -> dict:
    return {"id": uid, "language": language, "source": "test", "path": f"{uid}.py", "name": uid, "code": code,
            "docstring": None, "start_line": 1, "end_line": code.count("\n") + 1}


UNITS = [
    _unit("u1", "def a(xs, d, k):\n    if len(xs) == 0:\n        return d.get(k, None)\n"),
    _unit("u2", "def b(ys):\n    return len(ys) == 0\n"),
    _unit("u3", "def c(zs):\n    return zs\n"),                                     # nothing to rewrite
    _unit("u4", "def d(ws):\n    return len(ws) == 0 " + "or False " * 200 + "\n"),   # too long
    _unit("u5", "def e(vs:\n    return len(vs) == 0\n"),                             # does not parse
]


def test_mine_rows_and_skips():
    mined = mine_tasks(UNITS, "python", max_code_chars=300)
    assert isinstance(mined, MinedTasks)
    assert sorted((t["family"], t["unit_id"]) for t in mined.tasks) == [
        ("py_get_none", "u1"), ("py_len_eq_zero", "u1"), ("py_len_eq_zero", "u2")]
    assert mined.tasks == sorted(mined.tasks, key=lambda t: (t["family"], t["id"]))
    assert mined.skipped == collections.Counter({"too_long": 1, "original_does_not_parse": 1})
    assert split_counts(mined.tasks) == {"train": 3}

    row = next(t for t in mined.tasks if t["family"] == "py_len_eq_zero" and t["unit_id"] == "u1")
    assert set(row) == {"id", "language", "family", "split", "unit_id", "path", "name", "instruction", "code",
                        "expected", "matches"}
    assert row["id"] == "15e7799e5fb7" == task_id("py_len_eq_zero", "u1")  # stable across runs and versions
    assert row["language"] == "python" and row["split"] == "train" and row["matches"] == 1
    assert row["path"] == "u1.py" and row["name"] == "u1"
    assert row["instruction"] == get_family("py_len_eq_zero").instruction
    assert row["code"] == UNITS[0]["code"]
    assert row["expected"] == "def a(xs, d, k):\n    if not xs:\n        return d.get(k, None)\n"


def test_mine_counts_rule_errors_unchanged_and_broken_rewrites():
    def family(name, rule, fix):
        return RewriteFamily(name, "python", "Test.", rule, fix, "Test.")

    families = [
        family("t_bad_rule", {"pattern": "$A", "kind": "no_such_kind"}, "$A"),
        family("t_identity", {"pattern": "len($A)"}, "len($A)"),
        family("t_breaks", {"pattern": "len($A)"}, "len("),
        get_family("py_len_eq_zero"),
    ]
    units = [UNITS[0], UNITS[1]]
    mined = mine_tasks(units, "python", families)
    assert mined.skipped == collections.Counter({"rule_error": 2, "unchanged": 2, "rewrite_does_not_parse": 2})
    assert {t["family"] for t in mined.tasks} == {"py_len_eq_zero"}


def test_mine_rejects_families_of_another_language():
    with pytest.raises(ValueError, match="js_double_neg"):
        mine_tasks(UNITS, "python", [get_family("js_double_neg")])


def test_mine_is_deterministic_and_capped():
    units = [_unit(f"m{i:02d}", f"def f{i}(x):\n    return len(x) == 0\n") for i in range(12)]
    family = [get_family("py_len_eq_zero")]
    first = mine_tasks(units, "python", family, max_per_family=4, seed=7)
    assert len(first.tasks) == 4
    assert mine_tasks(list(reversed(units)), "python", family, max_per_family=4, seed=7).tasks == first.tasks
    assert [t["id"] for t in first.tasks] == sorted(t["id"] for t in first.tasks)
    picks = {tuple(t["unit_id"] for t in mine_tasks(units, "python", family, max_per_family=4, seed=s).tasks)
             for s in range(6)}
    assert len(picks) > 1  # the seed matters
    assert len(mine_tasks(units, "python", family).tasks) == 12  # default cap of 40


def test_mine_defaults_to_the_language_catalog():
    js = [_unit("j1", "function f(x) {\n  return !!x\n}", "javascript"),
          _unit("j2", "function g(a) {\n  return a.length === 0\n}", "javascript")]
    mined = mine_tasks(js, "javascript")
    assert {(t["family"], t["split"]) for t in mined.tasks} == {("js_double_neg", "test"),
                                                                 ("js_length_eq_zero", "train")}
    assert split_counts(mined.tasks) == {"test": 1, "train": 1}


def test_a_family_is_one_split_so_the_leak_check_passes_and_catches_a_planted_leak():
    """The group key is the family: mined tasks never put a family in two splits; a row that did is reported."""
    from assets.split_checks import leak_check
    from ml.splits import leaked_groups

    units = [_unit("a1", "def f(xs, n):\n    if not len(xs):\n        n = n - 1\n    return len(xs) == 0, xs[0:n]\n")]
    mined = mine_tasks(units, "python")
    assert {t["split"] for t in mined.tasks} == {"train", "dev", "test"}
    assert leaked_groups(mined.tasks, key="family") == {"test": [], "dev": []}
    assert leak_check("srl_tasks", mined.tasks, key="family").passed
    test_row = next(t for t in mined.tasks if t["split"] == "test")
    planted = [*mined.tasks, dict(test_row, id="copy", split="train")]
    assert leaked_groups(planted, key="family")["test"] == [test_row["family"]]
    assert not leak_check("srl_tasks", planted, key="family").passed


@pytest.mark.parametrize(("language", "family", "code", "expected"), [
    # ast-grep positions count characters: a byte offset would cut the span short after the non-ASCII text
    ("python", "py_in_list_tuple", "def f(x):\n    s = 'héllo ✓ 日本'\n    return x in ['é', 'ü', 'z']\n",
     "def f(x):\n    s = 'héllo ✓ 日本'\n    return x in ('é', 'ü', 'z')\n"),
    ("java", "java_var_new", 'void f() {\n    String s = "ünï ✓";\n    Foo f = new Foo("日本", 2);\n}',
     'void f() {\n    String s = "ünï ✓";\n    var f = new Foo("日本", 2);\n}'),
])
def test_non_ascii_before_a_multi_match(language, family, code, expected):
    mined = mine_tasks([_unit("n1", code, language)], language, [get_family(family)])
    assert [t["expected"] for t in mined.tasks] == [expected]
