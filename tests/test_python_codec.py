"""Round-trip, text-form and error tests of the reversible Python AST codec."""

from __future__ import annotations

import ast
import os
import sysconfig
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.codec.base import MODES, Codec, DecodeError
from ml.codec.python_ast import (
    CONST_SINGLETON_TOKENS,
    NODE_SPECS,
    OPERATOR_CATEGORIES,
    OPERATOR_TOKENS,
    PythonCodec,
    decode,
    decode_tree,
    encode,
    encode_tree,
    node_tags,
    structural_vocabulary,
    verify,
)
from ml.codec.tokens import is_structural, text_to_tokens, tokens_to_text

SNIPPETS = {
    "simple": "def f(x):\n    return x + 1\n",
    "fstrings": (
        "def f(a, b, c):\n    return f'{a!r:>{b}} {c=} {a!s} {b!a:{c}.{a}f} {{}} plain' + f'' + f'{a}'\n"
    ),
    "match": (
        "def f(cmd):\n"
        "    match cmd:\n"
        "        case [1, 2, *rest] if rest:\n"
        "            return rest\n"
        "        case {'k': v, 1: w, **kw}:\n"
        "            return v, kw\n"
        "        case Point(0, y=_, z=[*_]) | None as p:\n"
        "            return p\n"
        "        case str() | bytes():\n"
        "            pass\n"
        "        case (x, y, *_):\n"
        "            pass\n"
        "        case -1 | 1.5 | 2j | 'a' 'c' | b'b' | a.b.c | True | False:\n"
        "            pass\n"
        "        case {**rest}:\n"
        "            pass\n"
        "        case _:\n"
        "            return None\n"
    ),
    "async": (
        "async def f(xs):\n"
        "    async with a() as b, c:\n"
        "        async for x in xs:\n"
        "            await x\n"
        "    return [y async for y in b if await y]\n"
    ),
    "decorators": (
        "@functools.lru_cache(maxsize=None)\n@staticmethod\n@a.b[1](2)\n"
        "def f(x) -> list[int]:\n    '''doc'''\n    return [x]\n"
    ),
    "lambdas": "def f():\n    g = lambda: 0\n    h = lambda a, *b, c=1, **d: (a, b, c, d)\n    return g, h\n",
    "star_args": (
        "def f(a, b=2, /, c=3, *args, d, e=5, **kwargs):\n"
        "    g(*args, *a, x=1, **kwargs, **b)\n"
        "    first, *middle, last = args\n"
        "    [*a, *b] = c\n"
        "    return {**kwargs, 'a': a}, {*a, 1}\n"
    ),
    "posonly_defaults": "def f(a=1, b=2, /, c=3, *, d, e=4):\n    pass\n",
    "slices": (
        "def f(a):\n    return a[1:2], a[::3], a[:, None], a[..., 1:], a[1:2, ::-1], a[lo:hi:st], a[()]\n"
    ),
    "global_nonlocal": (
        "def f():\n    global g, h\n    x = 1\n    def inner():\n"
        "        nonlocal x\n        x += 1\n    del g\n    return inner\n"
    ),
    "try": (
        "def f():\n"
        "    try:\n        a()\n    except (A, B) as e:\n        raise C from e\n"
        "    except D:\n        raise\n    except:\n        pass\n"
        "    else:\n        b()\n    finally:\n        c()\n"
        "    try:\n        a()\n    except* ValueError as eg:\n        pass\n"
        "    except* TypeError:\n        pass\n"
        "    try:\n        pass\n    finally:\n        pass\n"
    ),
    "with_multiple": (
        "def f():\n    with open(a) as x, open(b) as (y, z), lock, c as d.e, e as f[0]:\n        pass\n"
    ),
    "literals": (
        "def f():\n"
        "    return (u'unicode', b'by\\x00tes', 10 ** 100, 123456789012345678901234567890,\n"
        "            1e-05, 1e999, -1e999, 1j, 2.5j, 1e999j, ..., None, True, False, 0x10, 0o7, 0b1,\n"
        "            1_000, .5, 0.0, -0.0, 'a<b>c', 'back\\\\slash \\\\l', '<open>', '', b'',\n"
        "            'multi\\nline\\ttab  spaces', '\\udc80', 1.5e300 * 1e10, 'x' 'y')\n"
    ),
    "comprehensions": (
        "def f(xs):\n"
        "    a = [x * y for x in xs if x for y in x if y if not y]\n"
        "    b = {k: v for k, v in xs.items()}\n"
        "    c = {x for x in xs}\n"
        "    d = (x for x in xs)\n"
        "    return a, b, c, d\n"
    ),
    "control": (
        "def f(n):\n"
        "    i = 0\n"
        "    while i < n:\n        i += 1\n        if i % 2:\n            continue\n"
        "        elif i > 10:\n            break\n        else:\n            pass\n"
        "    else:\n        i = -1\n"
        "    for j in range(n):\n        pass\n    else:\n        pass\n"
        "    assert i, 'msg'\n    assert n\n"
        "    x = y = z = 0\n    x: int\n    y: int = 1\n    (z): int = 2\n    self.a: str = 'a'\n"
        "    a = 1 if n else 2\n"
        "    b = 1 < n <= 3 != 4 is not None in a not in b\n"
        "    c = not a and b or (c and not d)\n"
        "    return ~i, -i, +i, i @ n, i // n, i ** -n, i << 1 >> 2 | 3 ^ 4 & 5\n"
    ),
    "walrus_yield": (
        "def f(xs):\n"
        "    if (n := len(xs)) > 10:\n        yield n\n"
        "    yield\n    yield from xs\n    x = yield\n    return [y for x in xs if (y := x)]\n"
    ),
    "nested": (
        "def outer(a):\n"
        "    import os, os.path as osp\n    from . import x\n    from ..pkg.mod import (y as z, w)\n"
        "    from mod import *\n"
        "    class C(Base, metaclass=Meta):\n        attr = 1\n        def m(self):\n            return self.attr\n"
        "    @dec\n    class D:\n        pass\n"
        "    async def inner(*, k):\n        return k\n"
        "    return C, D, inner\n"
    ),
    "calls_attrs": "def f(a):\n    return a.b.c(1, *d, e=2, **g).h[i].j()\n",
    "strings_odd": "def f():\n    return '\\\\l', '\\\\', '\\\\<', 'a b', ' ', '\\r\\n', '<sep>', '<str>'\n",
    "dict_set": "def f(d):\n    return {}, {1: 2, **d, 3: 4}, set(), {1}, [], [1, 2], (), (1,)\n",
    "empty_return": "def f():\n    return\n",
    "del_targets": "def f(a):\n    del a, a.b, a[0], (a, b), [c, d]\n",
    "for_targets": "def f(a):\n    for x.y, z[0], (p, *q) in a:\n        pass\n",
    "deep": "def f(x):\n    return " + " + ".join(["x"] * 400) + "\n",
    "type_annotations": (
        "def f(a: int, *args: str, b: 'T' = None, **kw: dict[str, int]) -> Optional[int]:\n    pass\n"
    ),
}


def _roundtrip(tree: ast.AST, mode: str) -> list[str]:
    tokens = encode_tree(tree, mode)
    decoded = decode_tree(tokens, mode)
    assert ast.dump(decoded) == ast.dump(tree), mode
    assert text_to_tokens(tokens_to_text(tokens)) == tokens
    return tokens


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_round_trip(name: str, mode: str) -> None:
    code = SNIPPETS[name]
    tree = ast.parse(code)
    tokens = _roundtrip(tree, mode)
    assert tokens == encode(code, mode)
    assert verify(code, tokens, mode)
    # the decoded source parses back to the same tree
    assert ast.dump(ast.parse(decode(tokens, mode))) == ast.dump(tree)


def _fn(body: list[ast.stmt], **kw) -> ast.Module:
    fn = ast.FunctionDef(
        name="f",
        args=ast.arguments(
            posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
        ),
        body=body,
        decorator_list=[],
        returns=None,
        **kw,
    )
    return ast.Module(body=[fn], type_ignores=[])


def _name(i: str, ctx=None) -> ast.Name:
    return ast.Name(id=i, ctx=ctx or ast.Load())


HAND_BUILT = {
    "type_comments": ast.Module(
        body=[
            ast.FunctionDef(
                name="f",
                args=ast.arguments(
                    posonlyargs=[],
                    args=[ast.arg(arg="a", annotation=None, type_comment="int")],
                    vararg=None,
                    kwonlyargs=[],
                    kw_defaults=[],
                    kwarg=None,
                    defaults=[],
                ),
                body=[
                    ast.Assign(targets=[_name("x", ast.Store())], value=_name("a"), type_comment="int"),
                    ast.For(
                        target=_name("i", ast.Store()),
                        iter=_name("a"),
                        body=[ast.Pass()],
                        orelse=[],
                        type_comment="str",
                    ),
                    ast.With(
                        items=[ast.withitem(context_expr=_name("a"), optional_vars=None)],
                        body=[ast.Pass()],
                        type_comment="<t> \\l x",
                    ),
                ],
                decorator_list=[],
                returns=None,
                type_comment="(int) -> None",
            )
        ],
        type_ignores=[ast.TypeIgnore(lineno=3, tag="[attr]"), ast.TypeIgnore(lineno=4, tag="")],
    ),
    "u_kind": _fn([ast.Return(value=ast.Constant(value="x", kind="u"))]),
    "non_default_ctx": _fn(
        [
            ast.Expr(value=_name("a", ast.Store())),
            ast.Assign(targets=[_name("b", ast.Load())], value=_name("c", ast.Del())),
            ast.Assign(
                targets=[ast.Tuple(elts=[_name("p", ast.Load()), _name("q", ast.Store())], ctx=ast.Load())],
                value=ast.List(elts=[], ctx=ast.Store()),
            ),
            ast.Delete(targets=[ast.Attribute(value=_name("o"), attr="x", ctx=ast.Store())]),
            ast.Expr(value=ast.Starred(value=_name("s"), ctx=ast.Del())),
            ast.Expr(value=ast.Subscript(value=_name("s"), slice=ast.Constant(1), ctx=ast.Store())),
        ]
    ),
    "odd_names": _fn(
        [ast.Expr(value=_name("1abc")), ast.Expr(value=_name("<x>")), ast.Expr(value=_name("a\\b"))]
    ),
    "odd_constants": _fn(
        [
            ast.Expr(value=ast.Constant(value=(1, 2.5, "a"))),
            ast.Expr(value=ast.Constant(value=frozenset({1}))),
            ast.Expr(value=ast.Constant(value=frozenset())),
            ast.Expr(value=ast.Constant(value=-5)),
            ast.Expr(value=ast.Constant(value=float("nan"))),
            ast.Expr(value=ast.Constant(value=float("-inf"))),
            ast.Expr(value=ast.Constant(value=complex(-0.0, 1.0))),
            ast.Expr(value=ast.Constant(value=complex(1.0, float("inf")))),
            ast.Expr(value=ast.Constant(value=-0.0)),
        ]
    ),
    "import_level_none": _fn(
        [ast.ImportFrom(module="m", names=[ast.alias(name="x", asname=None)], level=None)]
    ),
    "annassign_simple0": _fn(
        [ast.AnnAssign(target=_name("x", ast.Store()), annotation=_name("int"), value=None, simple=0)]
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_round_trip(name: str, mode: str) -> None:
    tokens = encode_tree(HAND_BUILT[name], mode)
    assert ast.dump(decode_tree(tokens, mode)) == ast.dump(HAND_BUILT[name])
    assert text_to_tokens(tokens_to_text(tokens)) == tokens


@pytest.mark.parametrize("mode", MODES)
def test_int_too_long_for_decimal(mode: str) -> None:
    big = 7**6000  # repr() refuses ints over 4300 digits: written in hex instead
    tokens = encode_tree(_fn([ast.Return(value=ast.Constant(value=big))]), mode)
    assert decode_tree(tokens, mode).body[0].body[0].value.value == big


def test_compact_uses_modifiers_only_when_needed() -> None:
    tokens = encode_tree(HAND_BUILT["non_default_ctx"], "compact")
    assert "<ctx:Store>" in tokens and "<ctx:Del>" in tokens and "<ctx:Load>" in tokens
    plain = encode("def f(a):\n    a.b, c[0] = d = e\n    del a, b[1]\n    return [x for (x, y) in a]\n")
    assert not any(t.startswith(("<ctx:", "<field:")) for t in plain)
    kinds = encode_tree(HAND_BUILT["u_kind"], "compact")
    assert "<field:kind>" in kinds


def test_compact_shorthands() -> None:
    tokens = encode("def f(a, b):\n    return a + 1 < b\n")
    assert tokens == [
        "<Module>", "<indent>",
        "<FunctionDef>", "f", "a", "b", "<close>",
        "<indent>", "<Return>", "<op:Lt>", "<op:Add>", "a", "1", "b", "<dedent>", "<close>",
        "<dedent>", "<close>",
    ]  # fmt: skip


def test_compact_is_shorter_than_verbose() -> None:
    for code in SNIPPETS.values():
        assert len(encode(code, "compact")) < len(encode(code, "verbose"))


def test_vocabulary_covers_emitted_tokens() -> None:
    vocab = structural_vocabulary()
    assert len(vocab) == len(set(vocab))
    assert vocab == structural_vocabulary()
    assert all(is_structural(t) for t in vocab)
    known = set(vocab)
    trees = [ast.parse(c) for c in SNIPPETS.values()] + list(HAND_BUILT.values())
    for tree in trees:
        for mode in MODES:
            emitted = {t for t in encode_tree(tree, mode) if is_structural(t)}
            assert emitted <= known, emitted - known


def test_public_grammar_tables_match_what_the_codec_writes() -> None:
    """The tables a grammar over the compact form reads: read-only, consistent with each other and with the
    tokens the encoder emits (a grammar built on them admits what the codec writes)."""
    with pytest.raises(TypeError):
        NODE_SPECS["<Nope>"] = NODE_SPECS["<Call>"]  # type: ignore[index]
    assert NODE_SPECS["<Call>"].name == "Call" and NODE_SPECS["<Call>"].cat == "expr"
    assert [f[0] for f in NODE_SPECS["<Call>"].order] == ["func", "args", "keywords"]
    assert "<Call>" in node_tags("expr") and "<Return>" in node_tags("stmt") and not node_tags("nope")
    assert node_tags("expr").isdisjoint(node_tags("stmt"))
    assert OPERATOR_CATEGORIES["<op:Add>"] == "operator" and OPERATOR_CATEGORIES["<op:Not>"] == "unaryop"
    assert all(OPERATOR_CATEGORIES[t] == cat for cat, toks in OPERATOR_TOKENS.items() for t in toks)
    assert set(OPERATOR_CATEGORIES) == set().union(*OPERATOR_TOKENS.values())
    vocab = set(structural_vocabulary())
    assert set(NODE_SPECS) <= vocab and set(OPERATOR_CATEGORIES) <= vocab and CONST_SINGLETON_TOKENS <= vocab
    emitted = {t for t in encode(SNIPPETS["simple"]) if t.startswith("<") and t[1:2].isupper()}
    assert emitted <= set(NODE_SPECS)


def test_codec_protocol() -> None:
    codec: Codec = PythonCodec()
    assert codec.language == "python"
    code = SNIPPETS["simple"]
    for mode in MODES:
        tokens = codec.encode(code, mode)
        assert codec.verify(code, tokens, mode)
        assert ast.dump(ast.parse(codec.decode(tokens, mode))) == ast.dump(ast.parse(code))
    assert codec.vocabulary() == structural_vocabulary()


def test_verify_rejects_wrong_or_bad_tokens() -> None:
    code = SNIPPETS["simple"]
    other = encode("def f(x):\n    return x + 2\n")
    assert not verify(code, other)
    assert not verify(code, ["<Module>", "<garbage>"])
    assert not verify(code, [])
    assert not verify(code, encode(code, "verbose"), "compact")


BAD_SEQUENCES = [
    [],
    ["<Module>"],
    ["<Module>", "<indent>"],
    ["<Module>", "<indent>", "<dedent>", "<close>", "extra"],
    ["<nonsense>"],
    ["x"],
    ["<Module>", "<indent>", "<FunctionDef>", "<dedent>"],
    ["<Module>", "<indent>", "<Return>", "<op:Add>", "a", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<Return>", "<const>", "not a literal", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<Return>", "1x", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<Name>", "<close>", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<Expr>", "<ctx:Store>", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<Return>", "<Name>", "<field:bogus>", "x", "<dedent>", "<close>"],
    ["<Module>", "<indent>", "<ImportFrom>", "m", "x", "<end>", "notint", "<dedent>", "<close>"],
    ["<open>", "<Module>", "<close>", "<close>"],
    ["<Return>", "<close>"],
    [1, 2],
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tokens", BAD_SEQUENCES, ids=range(len(BAD_SEQUENCES)))
def test_bad_sequences_raise_decode_error(tokens, mode: str) -> None:
    with pytest.raises(DecodeError):
        decode_tree(tokens, mode)


def test_decode_error_names_position() -> None:
    with pytest.raises(DecodeError, match=r"token 3: expected"):
        decode_tree(["<Module>", "<indent>", "<Return>", "<bogus>"])


_FUZZ_TOKENS = {
    mode: encode(SNIPPETS["match"] + SNIPPETS["star_args"] + SNIPPETS["literals"], mode) for mode in MODES
}


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    cut=st.integers(min_value=0, max_value=10_000),
    drop=st.lists(st.integers(min_value=0, max_value=10_000), max_size=3),
    junk=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from(structural_vocabulary() + ["x", "1", "", "1.5", "<weird>", "\\l"]),
        ),
        max_size=3,
    ),
)
def test_garbled_sequences_decode_or_raise_decode_error(mode, cut, drop, junk) -> None:
    tokens = list(_FUZZ_TOKENS[mode])
    tokens = tokens[: cut % (len(tokens) + 1)]
    for d in drop:
        if tokens:
            del tokens[d % len(tokens)]
    for at, tok in junk:
        tokens.insert(at % (len(tokens) + 1), tok)
    try:
        tree = decode_tree(tokens, mode)
    except DecodeError:
        return
    assert isinstance(tree, ast.Module)


@pytest.mark.parametrize("mode", MODES)
def test_every_truncation_raises_decode_error(mode: str) -> None:
    tokens = encode(SNIPPETS["nested"] + SNIPPETS["try"], mode)
    decode_tree(tokens, mode)
    for cut in range(len(tokens)):
        with pytest.raises(DecodeError):
            decode_tree(tokens[:cut], mode)


# ---------------------------------------------------------------------------------------------
# The standard library.
# ---------------------------------------------------------------------------------------------


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


@cache
def _stdlib_trees(step: int = 1) -> list[tuple[str, ast.Module]]:
    """Every ``step``-th stdlib file that parses, with its tree."""
    trees = []
    for path in _stdlib_files()[::step]:
        try:
            with open(path, encoding="utf-8") as fh:
                trees.append((path, ast.parse(fh.read())))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # lib2to3 test data, deliberately bad encodings, ...
    return trees


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield ast.Module(body=[node], type_ignores=[])


def test_text_form_round_trip_on_stdlib_sample() -> None:
    trees = _stdlib_trees(40)
    assert len(trees) > 20
    n = 0
    for _, tree in trees:
        for module in _functions(tree):
            for mode in MODES:
                tokens = encode_tree(module, mode)
                assert text_to_tokens(tokens_to_text(tokens)) == tokens
                n += 1
    assert n > 500


def test_round_trip_on_stdlib_sample() -> None:
    trees = _stdlib_trees(60)
    for path, tree in trees:
        for mode in MODES:
            assert ast.dump(decode_tree(encode_tree(tree, mode), mode)) == ast.dump(tree), path


@pytest.mark.slow
def test_every_stdlib_function_round_trips() -> None:
    total = 0
    failures = []
    tokens_by_mode = dict.fromkeys(MODES, 0)
    for path, tree in _stdlib_trees():
        for module in _functions(tree):
            total += 1
            expected = ast.dump(module)
            for mode in MODES:
                try:
                    tokens = encode_tree(module, mode)
                    ok = ast.dump(decode_tree(tokens, mode)) == expected
                    tokens_by_mode[mode] += len(tokens)
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    ok = False
                    expected_err = f"{type(exc).__name__}: {exc}"
                    failures.append((path, module.body[0].name, mode, expected_err))
                    continue
                if not ok:
                    failures.append((path, module.body[0].name, mode, "mismatch"))
    print(f"\nstdlib functions: {total}, failures: {len(failures)}, tokens: {tokens_by_mode}")
    assert total > 30_000
    assert tokens_by_mode["compact"] < tokens_by_mode["verbose"]
    assert failures == [], failures[:10]
