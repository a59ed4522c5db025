"""Level 2: a Z3 check of simple logical constraints on a repaired program.

Each expression of interest gets a type variable over a small sort (int, float, bool, str, bytes, none, other);
literals fix theirs, and a name bound exactly once by a plain assignment shares the type of what it is bound to.
Constraints: the operands of ``-``, ``*``, ``/``, ``//``, ``%``, ``**`` and unary ``-`` are numeric (``*`` and ``%``
also allow ``str * int`` and ``str % x``), the operands of ``+`` are both numeric or the same sequence type, an
ordering comparison compares numbers with numbers or strings with strings, and a ``range`` bound is an integer.
An unknown expression is ``other`` and satisfies everything. Unsatisfiable -> the candidate is rejected and the
decoder samples another (``ml.graph_repair.decoding``).
"""

from __future__ import annotations

import ast
from collections import Counter
from functools import cache

import z3

__all__ = ["violations"]

_NUMERIC_OPS = (ast.Sub, ast.Div, ast.FloorDiv, ast.Pow, ast.LShift, ast.RShift)
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


@cache
def _sort():
    ty, (i, f, b, s, y, n, o) = z3.EnumSort("PyType", ("int", "float", "bool", "str", "bytes", "none", "other"))
    return ty, {"int": i, "float": f, "bool": b, "str": s, "bytes": y, "none": n, "other": o}


def _literal_type(value) -> str:
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (bytes, "bytes")):
        if isinstance(value, t):
            return name
    return "none" if value is None else "other"


def violations(code: str) -> list[str]:
    """The constraints the program breaks (empty: satisfiable, or nothing to check)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ["does not parse"]
    ty, c = _sort()
    solver = z3.Solver()
    solver.set("timeout", 2000)
    counter = 0
    # bindings of each name of every kind: a name is typed by its value only when a plain `x = value` is its one
    # binding (a parameter, loop or `with` target, import, augmented assignment... makes its type unknown)
    assigned: Counter = Counter()
    plain = {id(n.targets[0]) for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            assigned[n.id] += 1 if id(n) in plain else 2
        elif isinstance(n, ast.arg):
            assigned[n.arg] += 2
        elif isinstance(n, ast.alias):
            assigned[(n.asname or n.name).split(".")[0]] += 2
        elif isinstance(n, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and getattr(n, "name", None):
            assigned[n.name] += 2
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            assigned[n.name] += 2
        elif isinstance(n, ast.Global | ast.Nonlocal):
            assigned.update({name: 2 for name in n.names})
    facts: list[tuple[str, z3.BoolRef]] = []

    def var(node: ast.AST) -> z3.ExprRef:
        nonlocal counter
        if isinstance(node, ast.Constant):
            return c[_literal_type(node.value)]
        if isinstance(node, ast.Name) and assigned.get(node.id) == 1:
            return z3.Const(f"name_{node.id}", ty)
        counter += 1
        return z3.Const(f"e{counter}", ty)

    numeric = lambda v: z3.Or(v == c["int"], v == c["float"], v == c["bool"], v == c["other"])  # noqa: E731
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                and assigned[n.targets[0].id] == 1:
            facts.append((f"line {n.lineno}: binding", var(n.targets[0]) == var(n.value)))
        elif isinstance(n, ast.BinOp):
            left, right, where = var(n.left), var(n.right), f"line {n.lineno}: {type(n.op).__name__}"
            if isinstance(n.op, ast.Add):
                same_seq = z3.And(left == right, z3.Or(left == c["str"], left == c["bytes"]))
                any_other = z3.Or(left == c["other"], right == c["other"])
                facts.append((where, z3.Or(z3.And(numeric(left), numeric(right)), same_seq, any_other)))
            elif isinstance(n.op, ast.Mult):
                seq = lambda v: z3.Or(v == c["str"], v == c["bytes"], v == c["other"])  # noqa: E731
                facts.append((where, z3.Or(z3.And(numeric(left), numeric(right)), z3.And(seq(left), numeric(right)),
                                           z3.And(numeric(left), seq(right)))))
            elif isinstance(n.op, ast.Mod):
                facts.append((where, z3.Or(numeric(left), left == c["str"], left == c["bytes"])))
                facts.append((where, z3.Implies(z3.Or(left == c["int"], left == c["float"]), numeric(right))))
            elif isinstance(n.op, _NUMERIC_OPS):
                facts.append((where, z3.And(numeric(left), numeric(right))))
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub | ast.UAdd | ast.Invert):
            facts.append((f"line {n.lineno}: unary {type(n.op).__name__}", numeric(var(n.operand))))
        elif isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], _ORDERING):
            left, right = var(n.left), var(n.comparators[0])
            facts.append((f"line {n.lineno}: ordering", z3.Or(z3.And(numeric(left), numeric(right)),
                                                             z3.And(left == c["str"], right == c["str"]),
                                                             left == c["other"], right == c["other"])))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "range":
            for a in n.args:
                v = var(a)
                facts.append((f"line {n.lineno}: range bound",
                              z3.Or(v == c["int"], v == c["bool"], v == c["other"])))
    if not facts:
        return []
    names = [z3.Bool(f"fact{i}") for i in range(len(facts))]
    for name, (_, fact) in zip(names, facts, strict=True):
        solver.assert_and_track(fact, name)
    if solver.check() != z3.unsat:
        return []
    core = {str(x) for x in solver.unsat_core()}
    return [where for name, (where, _) in zip(names, facts, strict=True) if str(name) in core]
