"""Alpha-renaming of one Python function: the names it binds become ``var_0, var_1, ...``.

Which occurrences are renamed is decided by resolving every name the way CPython does
(function, lambda and comprehension scopes; class bodies that nested scopes skip; ``global`` and
``nonlocal``; a walrus in a comprehension binding in the enclosing function), so renaming
never changes what a name refers to:

* renamed: the function's own name (also where it calls itself), its parameters, every name
  bound in it or in a scope nested in it (assignment, augmented/annotated assignment,
  for/with/except-as/walrus/``import ... as`` targets, ``del``, nested def and class names,
  comprehension and loop variables, match captures), and ``nonlocal`` names, which always
  refer to such a binding;
* kept: free names (builtins, globals, names imported at module level), names declared
  ``global``, attributes, keyword names at call sites, names bound directly in a class body
  (methods, class attributes: they are reachable as attributes), and names bound by an
  ``import`` without ``as`` (renaming them would change the import);
* a parameter that some call in the function passes by keyword (``g(x=1)``) keeps its name
  unless the callee is a free name (``sorted(key=...)``), since the call could reach it.

One name maps to one ``var_i`` for the whole function (two different locals both called ``x``
in sibling scopes both become the same ``var_i``, which is still correct); ``var_i`` are given
in order of first occurrence in a depth-first walk of the tree, skipping any ``var_i`` that the
function already uses as a name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["Renaming", "alpha_rename", "undo_renaming"]

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_COMPS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


@dataclass
class Renaming:
    code: str
    mapping: dict[str, str] = field(default_factory=dict)  # original name -> var_i


class _Scope:
    __slots__ = ("bound", "frozen", "globals", "kind", "nonlocals", "params", "parent", "walrus")

    def __init__(self, kind: str, parent: _Scope | None) -> None:
        self.kind = kind  # "module" | "function" | "class" | "comprehension"
        self.parent = parent
        self.bound: set[str] = set()
        self.frozen: set[str] = set()  # bound names that must keep their name
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.walrus: set[str] = set()  # walrus targets of a comprehension: bound one scope up
        self.params: set[str] = set()

    def is_local(self, name: str) -> bool:
        return (
            name in self.bound
            and name not in self.globals
            and name not in self.nonlocals
            and name not in self.walrus
        )


class _Analyzer:
    """Pass 1: build the scope tree and record every name occurrence with its scope."""

    def __init__(self) -> None:
        # (node, field, index or None, scope): node.field (or node.field[index]) is a name
        self.occurrences: list[tuple[ast.AST, str, int | None, _Scope]] = []
        self.calls: list[tuple[ast.Call, _Scope]] = []

    def occ(self, node, fld, scope, index=None) -> None:
        self.occurrences.append((node, fld, index, scope))

    def visit_list(self, nodes, scope) -> None:
        for n in nodes:
            if n is not None:
                self.visit(n, scope)

    def visit_arguments(self, args: ast.arguments, outer: _Scope, inner: _Scope) -> None:
        self.visit_list(args.defaults, outer)
        self.visit_list(args.kw_defaults, outer)
        all_args = args.posonlyargs + args.args + args.kwonlyargs
        all_args += [a for a in (args.vararg, args.kwarg) if a is not None]
        for a in all_args:
            if a.annotation is not None:
                self.visit(a.annotation, outer)
            inner.bound.add(a.arg)
            inner.params.add(a.arg)
            self.occ(a, "arg", inner)

    def visit(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                scope.bound.add(node.id)
            self.occ(node, "id", scope)
        elif isinstance(node, _FUNCS):
            self.visit_list(node.decorator_list, scope)
            if node.returns is not None:
                self.visit(node.returns, scope)
            scope.bound.add(node.name)
            self.occ(node, "name", scope)
            inner = _Scope("function", scope)
            self.visit_arguments(node.args, scope, inner)
            self.visit_list(node.body, inner)
        elif isinstance(node, ast.Lambda):
            inner = _Scope("function", scope)
            self.visit_arguments(node.args, scope, inner)
            self.visit(node.body, inner)
        elif isinstance(node, ast.ClassDef):
            self.visit_list(node.decorator_list, scope)
            self.visit_list(node.bases, scope)
            self.visit_list(node.keywords, scope)
            scope.bound.add(node.name)
            self.occ(node, "name", scope)
            self.visit_list(node.body, _Scope("class", scope))
        elif isinstance(node, _COMPS):
            gens = node.generators
            self.visit(gens[0].iter, scope)
            inner = _Scope("comprehension", scope)
            for i, gen in enumerate(gens):
                if i:
                    self.visit(gen.iter, inner)
                self.visit(gen.target, inner)
                self.visit_list(gen.ifs, inner)
            if isinstance(node, ast.DictComp):
                self.visit(node.key, inner)
                self.visit(node.value, inner)
            else:
                self.visit(node.elt, inner)
        elif isinstance(node, ast.NamedExpr):
            target = node.target
            owner = scope
            while owner.kind == "comprehension" and owner.parent is not None:
                owner.walrus.add(target.id)
                owner = owner.parent
            owner.bound.add(target.id)
            self.occ(target, "id", scope)
            self.visit(node.value, scope)
        elif isinstance(node, ast.Global):
            scope.globals.update(node.names)
            for i in range(len(node.names)):
                self.occ(node, "names", scope, i)
        elif isinstance(node, ast.Nonlocal):
            scope.nonlocals.update(node.names)
            for i in range(len(node.names)):
                self.occ(node, "names", scope, i)
        elif isinstance(node, ast.ExceptHandler):
            if node.type is not None:
                self.visit(node.type, scope)
            if node.name is not None:
                scope.bound.add(node.name)
                self.occ(node, "name", scope)
            self.visit_list(node.body, scope)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.asname is not None:
                    scope.bound.add(alias.asname)
                    self.occ(alias, "asname", scope)
                elif alias.name != "*":
                    name = alias.name.split(".")[0]
                    scope.bound.add(name)
                    scope.frozen.add(name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            if node.name is not None:
                scope.bound.add(node.name)
                self.occ(node, "name", scope)
            if isinstance(node, ast.MatchAs) and node.pattern is not None:
                self.visit(node.pattern, scope)
        elif isinstance(node, ast.MatchMapping):
            self.visit_list(node.keys, scope)
            self.visit_list(node.patterns, scope)
            if node.rest is not None:
                scope.bound.add(node.rest)
                self.occ(node, "rest", scope)
        else:
            if isinstance(node, ast.Call):
                self.calls.append((node, scope))
            for child in ast.iter_child_nodes(node):
                self.visit(child, scope)


def _resolve(name: str, scope: _Scope) -> _Scope | None:
    """The scope whose binding ``name`` refers to from ``scope``; None for a global/builtin."""
    if name in scope.globals:
        return _module_of(scope) if name in _module_of(scope).bound else None
    if scope.is_local(name):
        return scope
    return _enclosing(name, scope)


def _enclosing(name: str, scope: _Scope) -> _Scope | None:
    """Resolve ``name`` in the scopes around ``scope`` (class bodies are not visible)."""
    s = scope.parent
    while s is not None:
        if s.kind == "class":
            s = s.parent
            continue
        if s.kind == "module":
            return s if name in s.bound else None
        if name in s.globals:
            m = _module_of(s)
            return m if name in m.bound else None
        if s.is_local(name):
            return s
        s = s.parent
    return None


def _module_of(scope: _Scope) -> _Scope:
    while scope.parent is not None:
        scope = scope.parent
    return scope


def _names_used(tree: ast.AST) -> set[str]:
    used: set[str] = set()
    for node in ast.walk(tree):
        for fname, value in ast.iter_fields(node):
            if isinstance(value, str) and fname in (
                "id",
                "arg",
                "name",
                "asname",
                "attr",
                "rest",
                "module",
            ):
                used.add(value)
            elif fname in ("names", "kwd_attrs") and isinstance(value, list):
                used.update(v for v in value if isinstance(v, str))
    return used


def _get(node, fld, index):
    value = getattr(node, fld)
    return value if index is None else value[index]


def _set(node, fld, index, value) -> None:
    if index is None:
        setattr(node, fld, value)
    else:
        getattr(node, fld)[index] = value


def _the_function(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef:
    funcs = [n for n in tree.body if isinstance(n, _FUNCS)]
    if len(funcs) != 1:
        raise ValueError(f"expected one top-level def, found {len(funcs)}")
    return funcs[0]


def alpha_rename(code: str) -> Renaming:
    """Rename the names bound by the one top-level function of ``code`` to ``var_i``."""
    tree = ast.parse(code)
    func = _the_function(tree)
    module = _Scope("module", None)
    analyzer = _Analyzer()
    # only the function itself is analysed; its name is the one module binding renamed
    analyzer.visit(func, module)
    # parameters that a call in the function might pass by keyword keep their names
    keyword_names: set[str] = set()
    for call, scope in analyzer.calls:
        callee = call.func
        if isinstance(callee, ast.Name) and _resolve(callee.id, scope) is None:
            continue
        keyword_names.update(k.arg for k in call.keywords if k.arg is not None)

    def renamable(owner: _Scope | None, name: str) -> bool:
        if owner is None:
            return False
        if owner.kind == "module":
            return name == func.name
        if owner.kind == "class" or name in owner.frozen:
            return False
        return not (name in owner.params and name in keyword_names)

    targets: dict[int, list[tuple[str, int | None, bool]]] = {}
    for node, fld, index, scope in analyzer.occurrences:
        name = _get(node, fld, index)
        if isinstance(node, ast.Global):
            owner = _module_of(scope) if name in _module_of(scope).bound else None
        elif isinstance(node, ast.Nonlocal):
            owner = _enclosing(name, scope)
        else:
            owner = _resolve(name, scope)
        targets.setdefault(id(node), []).append((fld, index, renamable(owner, name)))

    used = _names_used(tree)
    mapping: dict[str, str] = {}
    counter = 0
    for node in _dfs(func):
        for fld, index, rename in targets.get(id(node), ()):
            if not rename:
                continue
            name = _get(node, fld, index)
            new = mapping.get(name)
            if new is None:
                while f"var_{counter}" in used:
                    counter += 1
                new = mapping[name] = f"var_{counter}"
                counter += 1
            _set(node, fld, index, new)
    return Renaming(code=ast.unparse(tree), mapping=mapping)


def _dfs(root: ast.AST):
    """Pre-order, fields in declaration order (the function's name comes first)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        children = []
        for _, value in ast.iter_fields(node):
            if isinstance(value, ast.AST):
                children.append(value)
            elif isinstance(value, list):
                children.extend(v for v in value if isinstance(v, ast.AST))
        stack.extend(reversed(children))


def undo_renaming(code: str, mapping: dict[str, str]) -> str:
    """Put the original names back (``mapping`` is original -> var_i, as ``alpha_rename`` gives)."""
    back = {new: old for old, new in mapping.items()}
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = back.get(node.id, node.id)
        elif isinstance(node, ast.arg):
            node.arg = back.get(node.arg, node.arg)
        elif isinstance(node, (*_FUNCS, ast.ClassDef, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
            if node.name is not None:
                node.name = back.get(node.name, node.name)
        elif isinstance(node, ast.alias):
            if node.asname is not None:
                node.asname = back.get(node.asname, node.asname)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            node.names = [back.get(n, n) for n in node.names]
        elif isinstance(node, ast.MatchMapping) and node.rest is not None:
            node.rest = back.get(node.rest, node.rest)
    return ast.unparse(tree)
