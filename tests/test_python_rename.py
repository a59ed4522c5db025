"""Alpha-renaming of Python functions: behaviour kept, free names kept, undo exact."""

from __future__ import annotations

import ast
import inspect
import keyword
import os
import re
import sysconfig
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.renaming.python_rename import Renaming, alpha_rename, undo_renaming


def _load(code: str, name: str, extra_globals: dict | None = None):
    namespace: dict = {"G_CONST": 10, **(extra_globals or {})}
    exec(compile(code, "<test>", "exec"), namespace)  # noqa: S102 - test code we wrote
    return namespace[name]


def _pair(code: str, extra_globals: dict | None = None):
    """(original function, renamed function, Renaming)."""
    code = textwrap.dedent(code)
    name = next(
        n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )
    renamed = alpha_rename(code)
    new_name = renamed.mapping.get(name, name)
    return _load(code, name, extra_globals), _load(renamed.code, new_name, extra_globals), renamed


def _call(fn, twin, args, kwargs):
    """Call ``fn`` and the renamed ``twin`` alike: keyword arguments are matched by position."""
    names = list(inspect.signature(fn).parameters)
    twin_names = list(inspect.signature(twin).parameters)
    translate = dict(zip(names, twin_names))
    return fn(*args, **kwargs), twin(*args, **{translate.get(k, k): v for k, v in kwargs.items()})


BEHAVIOUR = [
    (
        "loops",
        """
        def f(n):
            total = 0
            for i in range(n):
                if i % 3 == 0:
                    continue
                total += i
            else:
                total *= 2
            j = 0
            while j < n:
                j += 2
            return total, j
        """,
        [((5,), {}), ((0,), {}), ((11,), {})],
    ),
    (
        "comprehensions",
        """
        def f(xs):
            a = [x * y for x in xs for y in range(x) if y % 2]
            b = {k: v for k, v in enumerate(xs)}
            c = {x % 3 for x in xs}
            d = sum(x for x in xs if x > 1)
            x = 'outer'
            return a, b, sorted(c), d, x
        """,
        [(([1, 2, 3, 4],), {}), (([],), {})],
    ),
    (
        "closures",
        """
        def make(n):
            count = 0
            def inc(step=1):
                nonlocal count
                count += step
                return count + n
            def get():
                return count
            inc(); inc(5)
            return inc(2), get(), (lambda q, r=n: q * r + count)(3)
        """,
        [((2,), {}), ((-1,), {})],
    ),
    (
        "defaults_star_args",
        """
        def f(a, b=2, /, c=3, *args, d, e=5, **kwargs):
            return a, b, c, args, d, e, sorted(kwargs.items())
        """,
        [((1,), {"d": 4}), ((1, 2, 3, 4, 5), {"d": 0, "e": 1, "z": 9, "y": 8})],
    ),
    (
        "try_with",
        """
        import contextlib
        def f(x):
            log = []
            try:
                y = 10 // x
            except ZeroDivisionError as err:
                log.append(type(err).__name__)
                y = None
            else:
                log.append('ok')
            finally:
                log.append('done')
            with contextlib.suppress(KeyError) as sup, contextlib.nullcontext(x) as val:
                log.append((val, sup is not None))
            return y, log
        """,
        [((0,), {}), ((3,), {})],
    ),
    (
        "walrus",
        """
        def f(xs):
            if (n := len(xs)) > 2:
                head = xs[0]
            else:
                head = None
            picked = [y for x in xs if (y := x * 2) > 2]
            return n, head, picked, y if xs else None
        """,
        [(([1, 2, 3],), {}), (([5],), {})],
    ),
    (
        "nested_class",
        """
        def f(v):
            scale = 3
            class Box:
                factor = 2
                def __init__(self, value):
                    self.value = value
                def scaled(self):
                    return self.value * self.factor * scale
                @property
                def doubled(self):
                    return self.value * 2
            b = Box(v)
            return b.scaled(), b.doubled, Box.factor, isinstance(b, Box)
        """,
        [((4,), {})],
    ),
    (
        "builtins_and_globals",
        """
        def f(xs):
            out = sorted(xs, key=lambda x: -x)
            return len(out), max(out), out, G_CONST, list(map(str, out))
        """,
        [(([3, 1, 2],), {})],
    ),
    (
        "recursion",
        """
        def fib(n, memo=None):
            memo = {} if memo is None else memo
            if n < 2:
                return n
            if n not in memo:
                memo[n] = fib(n - 1, memo) + fib(n - 2, memo=memo)
            return memo[n]
        """,
        [((15,), {}), ((1,), {})],
    ),
    (
        "keyword_call_sites",
        """
        def f(a, sep='-'):
            def join(items, glue=','):
                return glue.join(items)
            parts = [str(a), str(a + 1)]
            return join(parts, glue=sep), '+'.join(parts), dict(key=a, sep=sep), print_like(a, end='!')
        """,
        [((1,), {}), ((7,), {"sep": ":"})],
    ),
    (
        "global_declared",
        """
        def f(x):
            global G_CONST
            G_CONST = G_CONST + x
            return G_CONST
        """,
        [((1,), {})],
    ),
    (
        "match_and_unpack",
        """
        def f(cmd):
            first, *rest = cmd
            match cmd:
                case [a, b]:
                    result = ('pair', a, b)
                case [a, *others] if len(others) > 1:
                    result = ('many', a, others)
                case {'k': v, **extra}:
                    result = ('map', v, extra)
                case _:
                    result = ('other', first, rest)
            return result
        """,
        [(([1, 2],), {}), (([1, 2, 3, 4],), {}), (([1],), {})],
    ),
    (
        "imports_and_del",
        """
        def f(x):
            import math as m
            import os.path
            from functools import reduce as red
            y = red(lambda p, q: p + q, [x, 2, 3])
            tmp = m.sqrt(y)
            del tmp
            return y, os.path.join('a', 'b')
        """,
        [((4,), {})],
    ),
    (
        "shadowing_builtins_locally",
        """
        def f(xs):
            def helper():
                return len(xs)
            def other():
                len = 5
                return len
            return helper(), other()
        """,
        [(([1, 2, 3],), {})],
    ),
]


@pytest.mark.parametrize("name,code,calls", BEHAVIOUR, ids=[b[0] for b in BEHAVIOUR])
def test_behaviour_preserved(name: str, code: str, calls) -> None:
    extra = {"print_like": lambda *a, **k: (a, sorted(k.items()))}
    original, renamed, result = _pair(code, extra)
    assert result.mapping, name
    assert all(v.startswith("var_") for v in result.mapping.values())
    for args, kwargs in calls:
        before, after = _call(original, renamed, args, kwargs)  # (separate globals dicts)
        assert before == after


def test_async_and_decorated() -> None:
    code = textwrap.dedent(
        """
        import asyncio, functools
        def deco(fn):
            @functools.wraps(fn)
            async def wrapper(*a, **k):
                return ('wrapped', await fn(*a, **k))
            return wrapper
        @deco
        async def fetch(n, *, delay=0):
            async def one(i):
                await asyncio.sleep(delay)
                return i * i
            results = [await one(i) for i in range(n)]
            async with asyncio.timeout(5):
                pass
            return results
        """
    )
    import asyncio

    tree = ast.parse(code)
    fn = next(n for n in tree.body if isinstance(n, ast.AsyncFunctionDef))
    prelude = ast.unparse(ast.Module(body=tree.body[:2], type_ignores=[]))
    unit = ast.unparse(fn)
    result = alpha_rename(unit)
    ns1: dict = {}
    exec(prelude + "\n" + unit, ns1)  # noqa: S102
    ns2: dict = {}
    exec(prelude + "\n" + result.code, ns2)  # noqa: S102
    assert result.mapping["fetch"] == "var_0"
    twin = ns2["var_0"]
    kw = {list(inspect.signature(twin).parameters)[-1]: 0}
    assert asyncio.run(ns1["fetch"](4, delay=0)) == asyncio.run(twin(4, **kw))


def test_names_numbered_in_order_and_existing_var_names_skipped() -> None:
    code = "def f(a, var_1):\n    b = a + var_1\n    return b\n"
    result = alpha_rename(code)
    assert result.mapping == {"f": "var_0", "a": "var_2", "var_1": "var_3", "b": "var_4"}
    assert result.code == "def var_0(var_2, var_3):\n    var_4 = var_2 + var_3\n    return var_4"


def test_free_names_untouched() -> None:
    code = textwrap.dedent(
        """
        def f(obj, items):
            global counter
            counter += 1
            obj.attr = len(items) + CONSTANT
            result = helper(obj.method(x=1), key=sorted)
            class K:
                field = 1
                def method(self):
                    return self.field
            return result, os.sep, K.field, K().method(), print(end='')
        """
    )
    result = alpha_rename(code)
    tree = ast.parse(result.code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"counter", "len", "CONSTANT", "helper", "sorted", "os", "print"} <= names
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert {"attr", "method", "sep", "field"} <= attrs
    keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert {"x", "key", "end"} <= keywords
    # names bound directly in a class body stay (they are attributes), the class name does not
    class_def = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    assert class_def.name.startswith("var_")
    assert {s.name for s in class_def.body if isinstance(s, ast.FunctionDef)} == {"method"}
    assert any(
        isinstance(t, ast.Name) and t.id == "field" for s in class_def.body for t in getattr(s, "targets", [])
    )
    for free in (
        "counter",
        "len",
        "CONSTANT",
        "helper",
        "sorted",
        "os",
        "print",
        "attr",
        "x",
        "key",
        "end",
        "field",
    ):
        assert free not in result.mapping
    assert set(result.mapping) == {"f", "obj", "items", "result", "K", "self"}


def test_undo_restores_original() -> None:
    code = BEHAVIOUR[2][1]
    code = textwrap.dedent(code)
    result = alpha_rename(code)
    assert isinstance(result, Renaming)
    assert ast.dump(ast.parse(undo_renaming(result.code, result.mapping))) == ast.dump(ast.parse(code))


def test_rejects_code_without_one_function() -> None:
    with pytest.raises(ValueError):
        alpha_rename("x = 1\n")
    with pytest.raises(ValueError):
        alpha_rename("def f(): pass\ndef g(): pass\n")


# ---------------------------------------------------------------------------------------------
# Property: generated small arithmetic functions behave the same once renamed.
# ---------------------------------------------------------------------------------------------

_RESERVED = (
    set(keyword.kwlist) | set(keyword.softkwlist) | {"range", "sum", "len", "abs", "min", "max", "print"}
)
_names = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True),
    st.sampled_from(["var_0", "var_1", "var_2", "x", "y", "i", "n", "total"]),
).filter(lambda s: s not in _RESERVED)

_TEMPLATES = [
    """
def {f}({a}, {b}):
    {t} = {a} * {c1} + {b}
    for {i} in range({n}):
        {t} += {i} * {a} - {c2}
    return {t}
""",
    """
def {f}({a}, {b}={c1}):
    {u} = [{i} * {b} for {i} in range(abs({a}) % {n} + 1) if {i} % 2 == 0]
    {t} = sum({u}) - {c2}
    return {t}, len({u})
""",
    """
def {f}({a}, *{b}):
    def {u}({i}, {t}={c1}):
        return {i} * {t} + {a}
    return [{u}({i}) for {i} in {b}] + [{u}({a}, {c2})]
""",
    """
def {f}({a}, {b}):
    {t} = 0
    {i} = {a}
    while {i} > 0 and {t} < {c1} * {n}:
        {i} -= 1
        {t} += {b} if {i} % 2 else -{c2}
    return ({t}, {i}) if {t} else min({a}, {b})
""",
    """
def {f}({a}, {b}):
    if {a} <= 1:
        return {b} + {c1}
    return {f}({a} - 1, {b} * {c2} % 1000) + {n}
""",
]


@settings(max_examples=120, deadline=None)
@given(
    template=st.sampled_from(_TEMPLATES),
    names=st.lists(_names, min_size=6, max_size=6, unique=True),
    consts=st.tuples(st.integers(-20, 20), st.integers(-20, 20), st.integers(1, 6)),
    inputs=st.lists(st.tuples(st.integers(-8, 8), st.integers(-8, 8)), min_size=1, max_size=3),
)
def test_generated_functions_behave_alike(template, names, consts, inputs) -> None:
    f, a, b, t, i, u = names
    c1, c2, n = consts
    code = template.format(f=f, a=a, b=b, t=t, i=i, u=u, c1=c1, c2=c2, n=n)
    original = _load(code, f)
    result = alpha_rename(code)
    renamed = _load(result.code, result.mapping[f])
    assert set(result.mapping.values()).isdisjoint(re.findall(r"\w+", code))  # fresh names only
    for x, y in inputs:
        assert original(x, y) == renamed(x, y)
    assert ast.dump(ast.parse(undo_renaming(result.code, result.mapping))) == ast.dump(ast.parse(code))


# ---------------------------------------------------------------------------------------------
# The standard library: undo is exact, renamed code compiles.
# ---------------------------------------------------------------------------------------------


def _stdlib_functions(step: int):
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    for path in paths[::step]:
        try:
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, ast.unparse(node)


def test_undo_restores_stdlib_sample() -> None:
    count = 0
    for path, code in _stdlib_functions(step=40):
        try:
            compile(code, path, "exec")
        except SyntaxError:
            continue  # a nested def cut out of its function: ``nonlocal`` has nothing to bind to
        result = alpha_rename(code)
        compile(result.code, path, "exec")  # still valid (nonlocal targets exist, ...)
        assert ast.dump(ast.parse(undo_renaming(result.code, result.mapping))) == ast.dump(ast.parse(code)), (
            path
        )
        # every bound name became var_i, nothing else did
        assert all(v.startswith("var_") for v in result.mapping.values())
        count += 1
    assert count > 500
