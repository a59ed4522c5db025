"""Reversible token serialization of Python ASTs (CPython 3.11 grammar).

Two modes (see ``ml.codec.base.MODES``):

``verbose``
    ``<open> <NodeType> <field:f1> value <field:f2> value ... <close>`` for every node and every
    field. Statement lists are ``<indent> ... <dedent>``, other lists ``<list> ... <end>``, None is
    ``<none>``, operators ``<op:Add>``, contexts ``<ctx:Load>``, identifiers and ints are payloads,
    ``string`` fields ``<str> payload``.

``compact``
    * the node-type token opens the node (``<Call>``); there are no ``<field:*>`` tokens; fields
      come positionally in a per-type order (``_COMPACT_ORDER``) that puts usually-default
      fields last;
    * a trailing run of fields at their default (None, [], or the per-field int default of
      ``_INT_DEFAULTS``) is left out and replaced by one ``<close>``; when nothing is left out
      there is no ``<close>``. When the last field written is a (non-statement) list, the
      ``<close>`` also ends that list, in place of its ``<end>``;
    * lists are ``elem ... <end>`` (no opener: the field position says a list comes),
      statement lists ``<indent> ... <dedent>``; a None element is ``<none>``;
    * product types that have one shape (``arguments``, ``keyword``, ``withitem``,
      ``comprehension``, ``match_case``) are written without a type token;
    * ``ctx`` is not written but inferred (Store/Del for assignment/deletion targets, recursively
      through Tuple/List/Starred, Load elsewhere); a ctx that differs from the inferred one is
      written as a ``<ctx:X>`` modifier right after the node-type token. ``type_comment`` and
      ``Constant.kind`` are written only when set, as ``<field:name> <str> payload`` right
      after the node-type token;
    * shorthands: in expr position a bare identifier payload is ``Name``, a bare payload starting
      with a digit is a number ``Constant``, ``<str> s`` / ``<const:True>`` / ``<const> repr`` a
      ``Constant``; ``<op:Add> l r`` is a BinOp, ``<op:USub> x`` a UnaryOp, ``<op:And> v... <end>``
      a BoolOp, ``<op:Lt> l r`` a one-operator Compare. In ``arg`` position a bare payload is an
      ``arg`` without annotation, in ``alias`` position an ``alias`` without asname, in
      ``pattern`` position a capture ``MatchAs``; in statement position an expression (any
      token that is not a statement type) is an ``Expr`` statement.

How the file is built and how to read it (one of the two files allowed past 500 lines: it is one table
and the code generated from it, which reads best in one place). Sections, in order:

1. *The ASDL table*: ``_build_tables`` reads every node class's signature from its docstring into a
   :class:`NodeSpec` (field kinds ``K_*``, compact order, defaults, inferred ctx). Everything below is
   driven by these tables; change the format here, not in the generated code.
2. *Constants and payloads*: constant/number payloads and ``structural_vocabulary``.
3. *Encoding* (verbose, generic) and *fast compact encoder*: ``_gen_encoder`` writes the Python source of
   one encoder function per node type, ``exec``'d at import (read the generator, not its output).
4. *Decoding* and *fast compact decoder*: the same scheme, ``_gen_decoder`` per node type; the verbose
   decoder is a generic recursive reader.
5. *Source-level API*: ``encode`` / ``decode`` / ``verify``, :class:`PythonCodec`, ``asdl_table``.
6. *Public grammar tables*: read-only views (``NODE_SPECS``, ``OPERATOR_TOKENS``, ``OPERATOR_CATEGORIES``,
   ``CONST_SINGLETON_TOKENS``, ``node_tags``) for grammars over the compact form
   (``ml.constrained.python_grammar``); other modules use these, never the ``_`` tables.

Payloads go through ``escape_payload``/``unescape_payload``. ``decode_tree`` raises
``DecodeError`` (position and what was expected) on any sequence it cannot decode.
"""

from __future__ import annotations

import ast
import re
import sys
import threading
from ast import BinOp, BoolOp, Compare, Constant, Expr, Name, UnaryOp, literal_eval
from collections.abc import Mapping
from operator import length_hint
from types import MappingProxyType

from ml.codec.base import MODES, DecodeError
from ml.codec.tokens import escape_payload, unescape_payload

__all__ = [
    "CONST_SINGLETON_TOKENS",
    "NODE_SPECS",
    "OPERATOR_CATEGORIES",
    "OPERATOR_TOKENS",
    "NodeSpec",
    "PythonCodec",
    "decode",
    "decode_tree",
    "encode",
    "encode_tree",
    "node_tags",
    "same_tree",
    "structural_vocabulary",
    "verify",
]

# ---------------------------------------------------------------------------------------------
# The ASDL table, read once from the node classes' docstrings.
# ---------------------------------------------------------------------------------------------

_SIG_RE = re.compile(r"^(\w+)(?:\((.*)\))?$")
_SINGLETON_CATS = ("operator", "unaryop", "cmpop", "boolop", "expr_context")
_BUILTIN_CATS = ("identifier", "string", "constant", "int")
# Products that have one shape: compact mode writes their fields without a type token.
_UNTAGGED = frozenset(("arguments", "keyword", "withitem", "comprehension", "match_case"))
# Rare string? fields written as ``<field:name>`` modifiers in compact mode.
_PREFIX_FIELDS = frozenset(("type_comment", "kind"))

# Per-type compact field order (fields not named keep their ASDL order, after these).
_COMPACT_ORDER = {
    "FunctionDef": ("name", "args", "body", "decorator_list", "returns"),
    "AsyncFunctionDef": ("name", "args", "body", "decorator_list", "returns"),
    "ClassDef": ("name", "bases", "body", "keywords", "decorator_list"),
    "ExceptHandler": ("type", "body", "name"),
    "arguments": ("args", "defaults", "vararg", "kwarg", "kwonlyargs", "kw_defaults", "posonlyargs"),
    "match_case": ("pattern", "body", "guard"),
    "MatchAs": ("name", "pattern"),
}
# Int fields with a usual value that compact mode may elide like None/[].
_INT_DEFAULTS = {
    ("AnnAssign", "simple"): 1,
    ("comprehension", "is_async"): 0,
    ("FormattedValue", "conversion"): -1,
    ("ImportFrom", "level"): 0,
}
# Fields whose expressions are assignment (Store) or deletion (Del) targets.
_STORE_FIELDS = {
    ("Assign", "targets"),
    ("AugAssign", "target"),
    ("AnnAssign", "target"),
    ("For", "target"),
    ("AsyncFor", "target"),
    ("comprehension", "target"),
    ("withitem", "optional_vars"),
    ("NamedExpr", "target"),
}
_DEL_FIELDS = {("Delete", "targets")}
# Nodes whose ctx passes on to their children (elts / value).
_CTX_PASSING = frozenset(("Tuple", "List", "Starred"))

# Field kinds.
K_NODE, K_OPTNODE, K_LIST, K_STMTS, K_IDENT, K_OPTIDENT, K_IDLIST = range(7)
K_STR, K_OPTSTR, K_INT, K_OPTINT, K_CONST, K_OP, K_CTX, K_OPLIST = range(7, 15)
_LIST_KINDS = (K_LIST, K_STMTS, K_IDLIST, K_OPLIST)


def _concrete_classes() -> list[type]:
    found: list[type] = []
    seen: set[type] = set()
    stack = [ast.AST]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub in seen or sub.__module__ != "ast":
                continue
            seen.add(sub)
            stack.append(sub)
            doc = (sub.__doc__ or "").split("\n")[0].strip()
            m = _SIG_RE.match(doc)
            if m and m.group(1) == sub.__name__:
                found.append(sub)
    found.sort(key=lambda c: c.__name__)
    return found


def _parse_signature(cls: type) -> list[tuple[str, str, str]]:
    """[(field name, ASDL type, qualifier '' | '*' | '?')] in ``_fields`` order."""
    m = _SIG_RE.match(cls.__doc__.split("\n")[0].strip())
    out = []
    if m.group(2):
        for part in m.group(2).split(","):
            typ, name = part.split()
            qual = typ[-1] if typ[-1] in "*?" else ""
            out.append((name, typ.rstrip("*?"), qual))
    if tuple(n for n, _, _ in out) != tuple(cls._fields):
        raise RuntimeError(f"ASDL signature of {cls.__name__} does not match its _fields")
    return out


class NodeSpec:
    """Everything the encoder and decoder need to know about one node class (built by ``_build_tables``; read-only
    after import).

    ``name`` (``"Call"``), ``tag`` (its token ``"<Call>"``), ``cat`` (ASDL category: ``"expr"``, ``"stmt"``, ...),
    ``tagged`` (False for the one-shape products written without a type token), ``passes_ctx`` (Tuple/List/Starred
    hand their ctx to their elements). ``fields``: one tuple per ASDL field, ``(name, index in _fields, kind K_*,
    ASDL type, ctx instance for child exprs, has_default, default)``; ``by_name`` indexes them. ``order``: the
    compact form's positional fields (prefix fields and ctx left out); ``order[elidable_from:]`` may all be elided
    by one ``<close>``. ``prefix``: the ``<field:name>`` modifier fields. ``ctx_idx``: index of ``ctx`` or -1."""

    __slots__ = (
        "by_name",
        "cat",
        "cls",
        "ctx_idx",
        "elidable_from",
        "fields",
        "name",
        "nfields",
        "order",
        "passes_ctx",
        "prefix",
        "tag",
        "tagged",
    )


_SPECS: dict[type, NodeSpec] = {}
_SPEC_BY_NAME: dict[str, NodeSpec] = {}
_SINGLETONS: dict[type, str] = {}  # singleton class -> token
_SINGLETON_BY_TOKEN: dict[str, tuple[str, ast.AST]] = {}  # token -> (category, instance)
_CAT_TYPES: dict[str, dict[str, NodeSpec]] = {}  # category -> {type token: spec}
_CTX_LOAD = ast.Load()
_CTX_STORE = ast.Store()
_CTX_DEL = ast.Del()
_CTX_INSTANCES = {ast.Load: _CTX_LOAD, ast.Store: _CTX_STORE, ast.Del: _CTX_DEL}


def _build_tables() -> None:
    classes = _concrete_classes()
    categories: dict[type, str] = {}
    for cls in classes:
        base = cls.__bases__[0]
        cat = base.__name__ if base is not ast.AST else cls.__name__
        categories[cls] = cat
    for cls in classes:
        cat = categories[cls]
        if cat in _SINGLETON_CATS:
            prefix = "<ctx:" if cat == "expr_context" else "<op:"
            tok = f"{prefix}{cls.__name__}>"
            inst = _CTX_INSTANCES.get(cls) or cls()
            _SINGLETONS[cls] = tok
            _SINGLETON_BY_TOKEN[tok] = (cat, inst)
    for cls in classes:
        cat = categories[cls]
        if cat in _SINGLETON_CATS:
            continue
        sig = _parse_signature(cls)
        spec = NodeSpec()
        spec.cls, spec.name, spec.cat = cls, cls.__name__, cat
        spec.tag = f"<{cls.__name__}>"
        spec.tagged = cls.__name__ not in _UNTAGGED
        spec.passes_ctx = cls.__name__ in _CTX_PASSING
        spec.nfields = len(sig)
        spec.ctx_idx = -1
        fields = []
        for idx, (fname, typ, qual) in enumerate(sig):
            if typ == "expr_context":
                kind = K_CTX
                spec.ctx_idx = idx
            elif typ in ("operator", "unaryop", "cmpop", "boolop"):
                kind = K_OPLIST if qual == "*" else K_OP
            elif typ == "identifier":
                kind = {"": K_IDENT, "?": K_OPTIDENT, "*": K_IDLIST}[qual]
            elif typ == "string":
                kind = K_OPTSTR if qual == "?" else K_STR
            elif typ == "int":
                kind = K_OPTINT if qual == "?" else K_INT
            elif typ == "constant":
                kind = K_CONST
            elif qual == "*":
                kind = K_STMTS if typ == "stmt" else K_LIST
            elif qual == "?":
                kind = K_OPTNODE
            else:
                kind = K_NODE
            key = (cls.__name__, fname)
            child_ctx = _CTX_STORE if key in _STORE_FIELDS else _CTX_DEL if key in _DEL_FIELDS else _CTX_LOAD
            if kind in _LIST_KINDS:
                has_default, default = True, None  # a fresh [] each time
            elif kind in (K_OPTNODE, K_OPTIDENT, K_OPTSTR, K_OPTINT):
                has_default, default = True, None
            elif key in _INT_DEFAULTS:
                has_default, default = True, _INT_DEFAULTS[key]
            else:
                has_default, default = False, None
            # (name, index in _fields, kind, category, ctx for child exprs, has_default, default)
            fields.append((fname, idx, kind, typ, child_ctx, has_default, default))
        spec.fields = fields
        spec.by_name = {f[0]: f for f in fields}
        spec.prefix = tuple(f for f in fields if f[0] in _PREFIX_FIELDS and f[2] == K_OPTSTR)
        prefix_names = {f[0] for f in spec.prefix}
        wanted = _COMPACT_ORDER.get(cls.__name__, ())
        rest = [f for f in fields if f[0] not in wanted and f[0] not in prefix_names and f[2] != K_CTX]
        order = [spec.by_name[n] for n in wanted] + rest
        spec.order = tuple(order)
        k = len(order)
        while k > 0 and order[k - 1][5]:
            k -= 1
        spec.elidable_from = k  # compact: fields order[k:] may all be elided
        _SPECS[cls] = spec
        _SPEC_BY_NAME[spec.tag] = spec
        _CAT_TYPES.setdefault(cat, {})[spec.tag] = spec


_build_tables()

_EXPR_TYPES = _CAT_TYPES["expr"]
_DIGITS = frozenset("0123456789")
_FIELD_NAMES = sorted({f[0] for s in _SPECS.values() for f in s.fields})
_CONST_SINGLETONS = {
    "<const:True>": True,
    "<const:False>": False,
    "<const:None>": None,
    "<const:Ellipsis>": ...,
}
_FLOAT_SPECIALS = frozenset(("inf", "-inf", "nan", "-nan"))


def structural_vocabulary() -> list[str]:
    """Every structural token either mode can emit, in a stable order, without duplicates."""
    vocab = ["<open>", "<close>", "<indent>", "<dedent>", "<list>", "<end>", "<none>", "<str>", "<const>"]
    vocab += list(_CONST_SINGLETONS)
    vocab += sorted(_SPEC_BY_NAME)
    vocab += sorted(tok for tok in _SINGLETON_BY_TOKEN if tok.startswith("<op:"))
    vocab += sorted(tok for tok in _SINGLETON_BY_TOKEN if tok.startswith("<ctx:"))
    vocab += [f"<field:{name}>" for name in _FIELD_NAMES]
    return vocab


# ---------------------------------------------------------------------------------------------
# Constants and payloads.
# ---------------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    if "\\" in text or "<" in text or not text.isascii():  # non-ASCII may hold lone surrogates
        return escape_payload(text)
    return text


def _unesc(tok: str) -> str:
    if "\\" in tok:
        return unescape_payload(tok)
    return tok


def _const_tokens(value, out: list) -> None:
    """Append the tokens of a constant value (shared by both modes)."""
    typ = type(value)
    if typ is str:
        out.append("<str>")
        out.append(_esc(value))
        return
    if value is None:
        out.append("<const:None>")
    elif typ is bool:
        out.append("<const:True>" if value else "<const:False>")
    elif value is ...:
        out.append("<const:Ellipsis>")
    elif typ is int or typ is float or typ is complex:
        try:
            text = repr(value)
        except ValueError:  # an int too long for decimal conversion
            out.append("<const>")
            out.append(hex(value))
            return
        if text[0] in _DIGITS:
            out.append(text)
        else:
            out.append("<const>")
            out.append(text)
    else:  # bytes, tuples, frozensets ...
        out.append("<const>")
        out.append(_esc(repr(value)))


def _number(text: str):
    """A bare numeric payload: the repr of an int, float or complex starting with a digit."""
    if text.isdigit():
        return int(text)
    if text[-1] == "j":
        return complex(text)
    return float(text)


def _const_from_repr(text: str):
    if text in _FLOAT_SPECIALS:
        return float(text)
    if text.endswith(("j", "j)")):
        return complex(text)
    if text.startswith("frozenset("):
        inner = text[len("frozenset(") : -1]
        return frozenset(literal_eval(inner)) if inner else frozenset()
    return literal_eval(text)


# ---------------------------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------------------------


def _encode_verbose(node, out: list) -> None:
    if node is None:
        out.append("<none>")
        return
    cls = type(node)
    spec = _SPECS.get(cls)
    if spec is None:
        raise TypeError(f"cannot encode {cls.__name__}")
    out.append("<open>")
    out.append(spec.tag)
    for f in spec.fields:
        name, _, kind = f[0], f[1], f[2]
        v = getattr(node, name, None)
        out.append(f"<field:{name}>")
        if kind == K_NODE or kind == K_OPTNODE:
            _encode_verbose(v, out)
        elif kind == K_LIST:
            out.append("<list>")
            for e in v:
                _encode_verbose(e, out)
            out.append("<end>")
        elif kind == K_STMTS:
            out.append("<indent>")
            for e in v:
                _encode_verbose(e, out)
            out.append("<dedent>")
        elif kind == K_IDENT or kind == K_OPTIDENT:
            out.append("<none>" if v is None else _esc(v))
        elif kind == K_IDLIST:
            out.append("<list>")
            for e in v:
                out.append(_esc(e))
            out.append("<end>")
        elif kind == K_OPLIST:
            out.append("<list>")
            for e in v:
                out.append(_SINGLETONS[type(e)])
            out.append("<end>")
        elif kind == K_OP or kind == K_CTX:
            out.append(_SINGLETONS[type(v)])
        elif kind == K_CONST:
            _const_tokens(v, out)
        elif kind == K_INT or kind == K_OPTINT:
            out.append("<none>" if v is None else str(v))
        else:  # K_STR / K_OPTSTR
            if v is None:
                out.append("<none>")
            else:
                out.append("<str>")
                out.append(_esc(v))
    out.append("<close>")


# ---------------------------------------------------------------------------------------------
# Fast compact encoder: one generated function per node type (its full form), wrapped by the
# shorthands; tokens are appended to the list of the current call.
# ---------------------------------------------------------------------------------------------

_G = globals()
_enc_lock = threading.Lock()
app = [].append
_ENC: dict[type, object] = {}


def _e(node, ctx) -> None:
    if node is None:
        app("<none>")
        return
    f = _ENC.get(type(node))
    if f is None:
        raise TypeError(f"cannot encode {type(node).__name__}")
    f(node, ctx)


def _gen_encoder(spec: NodeSpec) -> str:
    name = spec.name
    lines = [f"def _et_{name}(node, ctx):"]
    emit = lines.append
    if spec.tagged:
        emit(f"    app({spec.tag!r})")
    own = "ctx"
    if spec.ctx_idx >= 0:
        emit("    own = node.ctx")
        emit("    if type(own) is not type(ctx):")
        emit("        app(_SINGLETONS[type(own)])")
        own = "own"
    for p in spec.prefix:
        emit(f"    p = getattr(node, {p[0]!r}, None)")
        emit("    if p is not None:")
        emit(f"        app('<field:{p[0]}>')")
        emit("        app('<str>')")
        emit("        app(_esc(p))")
    order = spec.order
    n = len(order)
    for j, f in enumerate(order):
        emit(f"    v{j} = node.{f[0]}")
    k0 = spec.elidable_from
    if k0 < n:
        # last = number of fields written
        first = True
        for j in range(n - 1, k0 - 1, -1):
            f = order[j]
            kind = f[2]
            if kind in _LIST_KINDS:
                cond = f"v{j}"
            elif f[6] is None:
                cond = f"v{j} is not None"
            else:
                cond = f"not (type(v{j}) is int and v{j} == {f[6]!r})"
            emit(f"    {'if' if first else 'elif'} {cond}:")
            emit(f"        last = {j + 1}")
            first = False
        emit("    else:")
        emit(f"        last = {k0}")
    passes = spec.passes_ctx
    for j, f in enumerate(order):
        kind, cctx = f[2], f[4]
        v = f"v{j}"
        ctx_expr = (
            own
            if passes
            else {"Load": "_CTX_LOAD", "Store": "_CTX_STORE", "Del": "_CTX_DEL"}[type(cctx).__name__]
        )
        ind = "    "
        if j >= k0 and k0 < n:
            emit(f"{ind}if last == {j}:")
            if j > 0 and order[j - 1][2] in (K_LIST, K_IDLIST, K_OPLIST):
                emit(f"{ind}    return")  # the list already ended with <close>
            else:
                emit(f"{ind}    app('<close>')")
                emit(f"{ind}    return")
        if kind in (K_LIST, K_IDLIST, K_OPLIST):
            end = "'<end>'"
            if j >= k0 and k0 < n and j < n - 1:
                end = f"'<close>' if last == {j + 1} else '<end>'"
            elif k0 < n and j == n - 1:
                end = "'<end>'"
            emit(f"{ind}for e in {v}:")
            if kind == K_LIST:
                emit(f"{ind}    _e(e, {ctx_expr})")
            elif kind == K_IDLIST:
                emit(f"{ind}    app(_esc(e))")
            else:
                emit(f"{ind}    app(_SINGLETONS[type(e)])")
            emit(f"{ind}app({end})")
        elif kind == K_NODE or kind == K_OPTNODE:
            emit(f"{ind}_e({v}, {ctx_expr})")
        elif kind == K_STMTS:
            emit(f"{ind}app('<indent>')")
            emit(f"{ind}for e in {v}:")
            emit(f"{ind}    _e(e, _CTX_LOAD)")
            emit(f"{ind}app('<dedent>')")
        elif kind == K_IDENT:
            emit(f"{ind}app(_esc({v}))")
        elif kind == K_OPTIDENT:
            emit(f"{ind}app('<none>' if {v} is None else _esc({v}))")
        elif kind == K_OP:
            emit(f"{ind}app(_SINGLETONS[type({v})])")
        elif kind == K_CONST:
            emit(f"{ind}_const_tokens({v}, _out)")
        elif kind in (K_INT, K_OPTINT):
            emit(f"{ind}app('<none>' if {v} is None else str({v}))")
        else:
            emit(f"{ind}if {v} is None:")
            emit(f"{ind}    app('<none>')")
            emit(f"{ind}else:")
            emit(f"{ind}    app('<str>')")
            emit(f"{ind}    app(_esc({v}))")
    return "\n".join(lines)


def _build_encoder() -> None:
    for spec in sorted(_SPECS.values(), key=lambda s: s.name):
        exec(_gen_encoder(spec), _G)  # noqa: S102 - generated from the ASDL table above
        _ENC[spec.cls] = _G[f"_et_{spec.name}"]
    full = dict(_ENC)

    def name(node, ctx, full=full[ast.Name]):
        if type(node.ctx) is type(ctx):
            ident = node.id
            if ident and ident[0] not in _DIGITS:
                app(_esc(ident))
                return
        full(node, ctx)

    def constant(node, ctx, full=full[ast.Constant]):
        if node.kind is None:
            _const_tokens(node.value, _out)
        else:
            full(node, ctx)

    def binop(node, ctx):
        app(_SINGLETONS[type(node.op)])
        _e(node.left, _CTX_LOAD)
        _e(node.right, _CTX_LOAD)

    def unaryop(node, ctx):
        app(_SINGLETONS[type(node.op)])
        _e(node.operand, _CTX_LOAD)

    def boolop(node, ctx):
        app(_SINGLETONS[type(node.op)])
        for v in node.values:
            _e(v, _CTX_LOAD)
        app("<end>")

    def compare(node, ctx, full=full[ast.Compare]):
        if len(node.ops) == 1 and len(node.comparators) == 1:
            app(_SINGLETONS[type(node.ops[0])])
            _e(node.left, _CTX_LOAD)
            _e(node.comparators[0], _CTX_LOAD)
        else:
            full(node, ctx)

    def expr(node, ctx, full=full[ast.Expr]):
        if node.value is not None:  # in statement position an expression is an Expr
            _e(node.value, _CTX_LOAD)
        else:
            full(node, ctx)

    def arg(node, ctx, full=full[ast.arg]):
        if node.annotation is None and node.type_comment is None and node.arg:
            app(_esc(node.arg))
        else:
            full(node, ctx)

    def alias(node, ctx, full=full[ast.alias]):
        if node.asname is None and node.name:
            app(_esc(node.name))
        else:
            full(node, ctx)

    def match_as(node, ctx, full=full[ast.MatchAs]):
        if node.pattern is None and node.name:
            app(_esc(node.name))
        else:
            full(node, ctx)

    _ENC.update(
        {
            ast.Name: name,
            ast.Constant: constant,
            ast.BinOp: binop,
            ast.UnaryOp: unaryop,
            ast.BoolOp: boolop,
            ast.Compare: compare,
            ast.Expr: expr,
            ast.arg: arg,
            ast.alias: alias,
            ast.MatchAs: match_as,
        }
    )


_out: list = []
_build_encoder()


def _encode_compact(tree: ast.AST) -> list[str]:
    global _out, app
    with _enc_lock:
        out = _out = []
        app = out.append
        try:
            _e(tree, _CTX_LOAD)
        finally:
            _out = []
            app = _out.append
        return out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def encode_tree(tree: ast.AST, mode: str = "compact") -> list[str]:
    """Serialize an AST (normally a Module) into tokens."""
    _check_mode(mode)
    with _deep_recursion():
        if mode == "compact":
            return _encode_compact(tree)
        out: list[str] = []
        _encode_verbose(tree, out)
        return out


# ---------------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------------

_EOF = "<end of input>"


class _Decoder:
    __slots__ = ("pos", "toks")

    def __init__(self, tokens: list[str]) -> None:
        self.toks = list(tokens)
        self.toks.append(_EOF)
        self.pos = 0

    def fail(self, expected: str, pos: int | None = None):
        if pos is None:
            pos = self.pos
        got = self.toks[pos] if pos < len(self.toks) else _EOF
        return DecodeError(f"token {pos}: expected {expected}, got {got!r}")

    # -- shared leaves ------------------------------------------------------------------------

    def payload(self, what: str) -> str:
        tok = self.toks[self.pos]
        if tok[:1] == "<":
            raise self.fail(what)
        self.pos += 1
        return _unesc(tok)

    def raw_str(self) -> str:
        # after <str>: a payload (possibly empty)
        tok = self.toks[self.pos]
        if tok[:1] == "<":
            raise self.fail("a string payload")
        self.pos += 1
        return _unesc(tok)

    def int_value(self) -> int:
        tok = self.toks[self.pos]
        try:
            value = int(tok)
        except ValueError:
            raise self.fail("an int payload") from None
        self.pos += 1
        return value

    def const_value(self):
        """A constant whose first token is at pos (already known not to be <none> ...)."""
        toks = self.toks
        pos = self.pos
        tok = toks[pos]
        if tok == "<str>":
            self.pos = pos + 1
            return self.raw_str()
        if tok in _CONST_SINGLETONS:
            self.pos = pos + 1
            return _CONST_SINGLETONS[tok]
        if tok == "<const>":
            text = toks[pos + 1]
            if text[:1] == "<":
                raise self.fail("a constant repr", pos + 1)
            try:
                value = _const_from_repr(_unesc(text))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise self.fail("a literal constant repr", pos + 1) from None
            self.pos = pos + 2
            return value
        if tok[:1] in _DIGITS:
            try:
                value = _number(tok)
            except ValueError:
                raise self.fail("a number") from None
            self.pos = pos + 1
            return value
        raise self.fail("a constant")

    def op(self, cat: str):
        tok = self.toks[self.pos]
        entry = _SINGLETON_BY_TOKEN.get(tok)
        if entry is None or entry[0] != cat:
            raise self.fail(f"an {cat} token")
        self.pos += 1
        return entry[1]


# ---------------------------------------------------------------------------------------------
# Fast compact decoder: one generated function per node type, reading tokens from an iterator.
# Each ``_d_<Type>`` function is called after its type token was consumed; each category reader
# ``_d_<category>(t, ctx)`` is given the first token of its value, already consumed.
# ---------------------------------------------------------------------------------------------

_dec_lock = threading.Lock()
_dec_tokens: list = []
_dec_iter = iter(())
nxt = _dec_iter.__next__


def _dec_pos() -> int:
    """Index of the token consumed last."""
    return len(_dec_tokens) - length_hint(_dec_iter) - 1


def _err(expected: str, got=None):
    pos = _dec_pos()
    if got is None:
        got = _dec_tokens[pos] if 0 <= pos < len(_dec_tokens) else _EOF
    return DecodeError(f"token {pos}: expected {expected}, got {got!r}")


def _ident(t: str, what: str) -> str:
    if t[:1] == "<":
        raise _err(what)
    return unescape_payload(t) if "\\" in t else t


def _raw() -> str:
    t = nxt()
    if t[:1] == "<":
        raise _err("a string payload")
    return unescape_payload(t) if "\\" in t else t


def _int(t: str) -> int:
    try:
        return int(t)
    except ValueError:
        raise _err("an int payload") from None


def _const(t: str):
    """A constant value whose first token ``t`` is consumed."""
    if t == "<str>":
        return _raw()
    if t in _CONST_SINGLETONS:
        return _CONST_SINGLETONS[t]
    if t == "<const>":
        text = nxt()
        if text[:1] == "<":
            raise _err("a constant repr")
        try:
            return _const_from_repr(unescape_payload(text) if "\\" in text else text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise _err("a literal constant repr") from None
    if t[:1] in _DIGITS:
        try:
            return _number(t)
        except ValueError:
            raise _err("a number") from None
    raise _err("a constant")


def _op_reader(table: dict, what: str):
    def read(t: str):
        op = table.get(t)
        if op is None:
            raise _err(what)
        return op

    return read


_OPS_BY_CAT: dict[str, dict[str, ast.AST]] = {}
for _tok, (_cat, _inst) in _SINGLETON_BY_TOKEN.items():
    _OPS_BY_CAT.setdefault(_cat, {})[_tok] = _inst
_MODIFIERS = frozenset(t for t in _SINGLETON_BY_TOKEN if t.startswith("<ctx:")) | frozenset(
    f"<field:{name}>" for name in _PREFIX_FIELDS
)
_EXPR_D: dict = {}
_STMT_D: dict = {}
_TYPE_D: dict[str, dict] = {}  # category -> {type token: reader}


def _d_expr(t, ctx):
    f = _EXPR_D.get(t)
    if f is not None:
        return f(ctx)
    c = t[:1]
    if c == "<":
        raise _err("an expression")
    if c in _DIGITS:
        try:
            return Constant(_number(t), None)
        except ValueError:
            raise _err("a number") from None
    return Name(unescape_payload(t) if "\\" in t else t, ctx)


def _d_stmt(t, ctx=None):
    f = _STMT_D.get(t)
    if f is not None:
        return f(_CTX_LOAD)
    return Expr(_d_expr(t, _CTX_LOAD))


def _tagged_reader(cat: str, shorthand=None):
    table = _TYPE_D.setdefault(cat, {})

    def read(t, ctx):
        f = table.get(t)
        if f is not None:
            return f(ctx)
        if shorthand is not None and t[:1] != "<":
            return shorthand(unescape_payload(t) if "\\" in t else t)
        raise _err(f"a {cat} node")

    return read


def _gen_decoder(spec: NodeSpec) -> str:
    """Source of the reader of one node type."""
    name = spec.name
    lines = []
    emit = lines.append
    if spec.tagged:
        emit(f"def _dt_{name}(ctx):")
    else:
        emit(f"def _dt_{name}(t, ctx):")
    order = spec.order
    n = len(order)
    prefix_vars = {f[0]: "None" for f in spec.prefix}
    if n == 0 and not spec.prefix and spec.ctx_idx < 0:
        emit(f"    return {name}()")
        return "\n".join(lines)
    if spec.tagged:
        emit("    t = nxt()")
    if spec.prefix or spec.ctx_idx >= 0:
        for p in prefix_vars:
            emit(f"    p_{p} = None")
        emit("    while t in _MODIFIERS:")
        if spec.ctx_idx >= 0:
            emit("        if t[:5] == '<ctx:':")
            emit("            ctx = _OPS_BY_CAT['expr_context'][t]")
            emit("            t = nxt()")
            emit("            continue")
        for p in prefix_vars:
            emit(f"        if t == '<field:{p}>':")
            emit("            if nxt() != '<str>':")
            emit("                raise _err('<str>')")
            emit(f"            p_{p} = _raw()")
            emit("            t = nxt()")
            emit("            continue")
        emit(f"        raise _err('a field of {name}')")
    values = {}
    for f in spec.fields:
        if f[2] == K_CTX:
            values[f[0]] = "ctx"
        elif f[0] in prefix_vars:
            values[f[0]] = f"p_{f[0]}"

    def ret(from_j: int) -> str:
        vals = dict(values)
        for k in range(from_j, n):
            f = order[k]
            vals[f[0]] = "[]" if f[2] in _LIST_KINDS else repr(f[6])
        return f"{name}({', '.join(vals[f[0]] for f in spec.fields)})"

    passes = spec.passes_ctx
    for j, f in enumerate(order):
        fname, _, kind, cat, cctx, _, _ = f
        var = f"v{j}"
        values[fname] = var
        ctx_expr = (
            "ctx"
            if passes
            else {"Load": "_CTX_LOAD", "Store": "_CTX_STORE", "Del": "_CTX_DEL"}[type(cctx).__name__]
        )
        ind = "    "
        if j > 0:
            emit(f"{ind}t = nxt()")
        if j >= spec.elidable_from:
            emit(f"{ind}if t == '<close>':")
            emit(f"{ind}    return {ret(j)}")
        reader = f"_d_{cat}"
        if kind == K_NODE:
            emit(f"{ind}{var} = {reader}(t, {ctx_expr})")
        elif kind == K_OPTNODE:
            emit(f"{ind}{var} = None if t == '<none>' else {reader}(t, {ctx_expr})")
        elif kind in (K_LIST, K_IDLIST, K_OPLIST):
            if kind == K_LIST:
                item = (
                    f"None if t == '<none>' else {reader}(t, {ctx_expr})"
                    if cat == "expr"
                    else f"{reader}(t, {ctx_expr})"
                )
            elif kind == K_IDLIST:
                item = f"_ident(t, 'an identifier or <end> in {name}.{fname}')"
            else:
                item = f"_op_{cat}(t)"
            emit(f"{ind}{var} = []")
            emit(f"{ind}while t != '<end>':")
            emit(f"{ind}    if t == '<close>':")
            if j + 1 >= spec.elidable_from:
                emit(f"{ind}        return {ret(j + 1)}")
            else:
                emit(f"{ind}        raise _err('<end>')")
            emit(f"{ind}    {var}.append({item})")
            emit(f"{ind}    t = nxt()")
        elif kind == K_STMTS:
            emit(f"{ind}if t != '<indent>':")
            emit(f"{ind}    raise _err('<indent>')")
            emit(f"{ind}{var} = []")
            emit(f"{ind}t = nxt()")
            emit(f"{ind}while t != '<dedent>':")
            emit(f"{ind}    {var}.append(_d_stmt(t))")
            emit(f"{ind}    t = nxt()")
        elif kind == K_IDENT:
            emit(f"{ind}{var} = _ident(t, 'identifier {name}.{fname}')")
        elif kind == K_OPTIDENT:
            emit(f"{ind}{var} = None if t == '<none>' else _ident(t, 'identifier {name}.{fname}')")
        elif kind == K_OP:
            emit(f"{ind}{var} = _op_{cat}(t)")
        elif kind == K_CONST:
            emit(f"{ind}{var} = _const(t)")
        elif kind in (K_INT, K_OPTINT):
            if kind == K_OPTINT:
                emit(f"{ind}{var} = None if t == '<none>' else _int(t)")
            else:
                emit(f"{ind}{var} = _int(t)")
        else:  # K_STR / K_OPTSTR
            if kind == K_OPTSTR:
                emit(f"{ind}if t == '<none>':")
                emit(f"{ind}    {var} = None")
                emit(f"{ind}elif t == '<str>':")
            else:
                emit(f"{ind}if t == '<str>':")
            emit(f"{ind}    {var} = _raw()")
            emit(f"{ind}else:")
            emit(f"{ind}    raise _err('<str> for {name}.{fname}')")
    emit(f"    return {ret(n)}")
    return "\n".join(lines)


def _build_decoder() -> None:
    for cat, table in _OPS_BY_CAT.items():
        _G[f"_op_{cat}"] = _op_reader(table, f"an {cat} token")
    for spec in _SPECS.values():
        _G[spec.name] = spec.cls
    for spec in sorted(_SPECS.values(), key=lambda s: s.name):
        exec(_gen_decoder(spec), _G)  # noqa: S102 - generated from the ASDL table above
    shorthands = {
        "arg": lambda s: ast.arg(s, None, None),
        "alias": lambda s: ast.alias(s, None),
        "pattern": lambda s: ast.MatchAs(None, s),
    }
    for cat, types in _CAT_TYPES.items():
        if cat in ("expr", "stmt"):
            continue
        untagged = [s for s in types.values() if not s.tagged]
        if untagged:
            _G[f"_d_{cat}"] = _G[f"_dt_{untagged[0].name}"]
        else:
            _G[f"_d_{cat}"] = _tagged_reader(cat, shorthands.get(cat))
    for cat, table in _CAT_TYPES.items():
        target = _EXPR_D if cat == "expr" else _STMT_D if cat == "stmt" else _TYPE_D.setdefault(cat, {})
        for tok, spec in table.items():
            target[tok] = _G[f"_dt_{spec.name}"]

    def binop(op):
        return lambda ctx: BinOp(_d_expr(nxt(), _CTX_LOAD), op, _d_expr(nxt(), _CTX_LOAD))

    def unaryop(op):
        return lambda ctx: UnaryOp(op, _d_expr(nxt(), _CTX_LOAD))

    def compare(op):
        return lambda ctx: Compare(_d_expr(nxt(), _CTX_LOAD), [op], [_d_expr(nxt(), _CTX_LOAD)])

    def boolop(op):
        def read(ctx):
            values = []
            t = nxt()
            while t != "<end>":
                values.append(None if t == "<none>" else _d_expr(t, _CTX_LOAD))
                t = nxt()
            return BoolOp(op, values)

        return read

    makers = {"operator": binop, "unaryop": unaryop, "cmpop": compare, "boolop": boolop}
    for cat, make in makers.items():
        for tok, op in _OPS_BY_CAT[cat].items():
            _EXPR_D[tok] = make(op)

    def const(tok):
        return lambda ctx: Constant(_const(tok), None)

    for tok in ("<str>", "<const>", *_CONST_SINGLETONS):
        _EXPR_D[tok] = const(tok)


_build_decoder()


def _decode_compact(tokens: list[str]) -> ast.AST:
    global _dec_tokens, _dec_iter, nxt
    with _dec_lock:
        _dec_tokens = tokens
        _dec_iter = it = iter(tokens)
        nxt = it.__next__
        try:
            t = nxt()
            tree = _d_mod(t, _CTX_LOAD)  # noqa: F821 - built by _build_decoder
            if next(it, _EOF) is not _EOF:
                raise _err("end of input")
            return tree
        except StopIteration:
            raise DecodeError(f"token {len(tokens)}: unexpected end of input") from None
        except (TypeError, AttributeError) as exc:
            if all(type(t) is str for t in tokens):
                raise
            raise DecodeError("tokens must be strings") from exc
        finally:
            _dec_tokens = []
            _dec_iter = iter(())
            nxt = _dec_iter.__next__


class _VerboseDecoder(_Decoder):
    __slots__ = ()

    def value_node(self, cat: str, optional: bool):
        toks = self.toks
        tok = toks[self.pos]
        if tok == "<none>":
            self.pos += 1
            return None
        if tok != "<open>":
            raise self.fail(f"<open> of a {cat} node" + (" or <none>" if optional else ""))
        tag = toks[self.pos + 1]
        types = _CAT_TYPES.get(cat)
        spec = types.get(tag) if types is not None else None
        if spec is None:
            raise self.fail(f"a {cat} node type", self.pos + 1)
        self.pos += 2
        vals = [None] * spec.nfields
        seen = [False] * spec.nfields
        while True:
            tok = toks[self.pos]
            if tok == "<close>":
                self.pos += 1
                break
            if tok[:7] != "<field:":
                raise self.fail(f"<field:...> or <close> in {spec.name}")
            f = spec.by_name.get(tok[7:-1])
            if f is None or seen[f[1]]:
                raise self.fail(f"a (new) field of {spec.name}")
            self.pos += 1
            seen[f[1]] = True
            vals[f[1]] = self.value(f, spec)
        for f in spec.fields:
            if not seen[f[1]]:
                if f[2] in _LIST_KINDS:
                    vals[f[1]] = []
                elif not f[5]:
                    raise DecodeError(f"token {self.pos}: {spec.name} lacks field {f[0]!r}")
                else:
                    vals[f[1]] = f[6]
        try:
            return spec.cls(*vals)
        except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
            raise DecodeError(f"token {self.pos}: cannot build {spec.name}: {exc}") from None

    def value(self, f, spec: NodeSpec):
        toks = self.toks
        kind = f[2]
        tok = toks[self.pos]
        if kind == K_NODE or kind == K_OPTNODE:
            return self.value_node(f[3], kind == K_OPTNODE)
        if kind == K_LIST or kind == K_IDLIST or kind == K_OPLIST:
            if tok != "<list>":
                raise self.fail(f"<list> for {spec.name}.{f[0]}")
            self.pos += 1
            out = []
            while True:
                tok = toks[self.pos]
                if tok == "<end>":
                    self.pos += 1
                    return out
                if kind == K_LIST:
                    out.append(self.value_node(f[3], True))
                elif kind == K_OPLIST:
                    out.append(self.op(f[3]))
                else:
                    out.append(self.payload(f"an identifier or <end> in {spec.name}.{f[0]}"))
        if kind == K_STMTS:
            if tok != "<indent>":
                raise self.fail(f"<indent> for {spec.name}.{f[0]}")
            self.pos += 1
            out = []
            while True:
                if toks[self.pos] == "<dedent>":
                    self.pos += 1
                    return out
                out.append(self.value_node("stmt", False))
        if tok == "<none>" and kind in (K_OPTIDENT, K_OPTSTR, K_OPTINT):
            self.pos += 1
            return None
        if kind == K_IDENT or kind == K_OPTIDENT:
            return self.payload(f"identifier {spec.name}.{f[0]}")
        if kind == K_OP or kind == K_CTX:
            return self.op(f[3])
        if kind == K_CONST:
            return self.const_value()
        if kind == K_INT or kind == K_OPTINT:
            return self.int_value()
        if tok != "<str>":
            raise self.fail(f"<str> for {spec.name}.{f[0]}")
        self.pos += 1
        return self.raw_str()


class _deep_recursion:
    """Deeply nested expressions (long ``a + b + ...`` chains) need more than 1000 frames."""

    def __enter__(self):
        self.old = sys.getrecursionlimit()
        if self.old < 20000:
            sys.setrecursionlimit(20000)

    def __exit__(self, *exc):
        sys.setrecursionlimit(self.old)
        return False


def decode_tree(tokens: list[str], mode: str = "compact") -> ast.Module:
    """Rebuild the AST of a token sequence; DecodeError when the sequence is not one."""
    _check_mode(mode)
    if not isinstance(tokens, (list, tuple)):
        raise DecodeError("tokens must be a list of strings")
    try:
        with _deep_recursion():
            if mode == "compact":
                tree = _decode_compact(tokens)
            else:
                if not all(type(t) is str for t in tokens):
                    raise DecodeError("tokens must be a list of strings")
                dec = _VerboseDecoder(tokens)
                tree = dec.value_node("mod", False)
                if dec.pos != len(dec.toks) - 1:
                    raise dec.fail("end of input")
    except IndexError:
        raise DecodeError("unexpected end of tokens") from None
    except RecursionError:
        raise DecodeError("tokens nest too deeply") from None
    if not isinstance(tree, ast.Module):
        raise DecodeError(f"token 0: expected a Module, got {type(tree).__name__}")
    return tree


# ---------------------------------------------------------------------------------------------
# Source-level API.
# ---------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    """ast.dump(a) == ast.dump(b), computed without building the dumps."""
    stack = [(a, b)]
    pop, push = stack.pop, stack.append
    AST, lst = ast.AST, list
    while stack:
        x, y = pop()
        tx = type(x)
        if tx is not type(y):
            return False
        if isinstance(x, AST):
            for name in x._fields:
                push((getattr(x, name, None), getattr(y, name, None)))
        elif tx is lst:
            if len(x) != len(y):
                return False
            for pair in zip(x, y):
                push(pair)
        elif x is y:
            continue
        elif tx is str or tx is int:
            if x != y:
                return False
        elif repr(x) != repr(y):
            return False
    return True


def encode(code: str, mode: str = "compact") -> list[str]:
    return encode_tree(ast.parse(code), mode)


def decode(tokens: list[str], mode: str = "compact") -> str:
    tree = decode_tree(tokens, mode)
    with _deep_recursion():
        return ast.unparse(ast.fix_missing_locations(tree))


def same_tree(a: ast.AST, b: ast.AST) -> bool:
    """``ast.dump(a) == ast.dump(b)``, without building the dumps."""
    with _deep_recursion():
        return _same(a, b)


def verify(code: str, tokens: list[str], mode: str = "compact") -> bool:
    """True when ``tokens`` decode to exactly the AST of ``code`` (ast.dump equality)."""
    try:
        tree = decode_tree(tokens, mode)
    except DecodeError:
        return False
    try:
        with _deep_recursion():
            return _same(tree, ast.parse(code))
    except SyntaxError:
        return False


class PythonCodec:
    """The Python codec as an ``ml.codec.base.Codec``."""

    language = "python"

    def encode(self, code: str, mode: str = "compact") -> list[str]:
        return encode(code, mode)

    def decode(self, tokens: list[str], mode: str = "compact") -> str:
        return decode(tokens, mode)

    def verify(self, code: str, tokens: list[str], mode: str = "compact") -> bool:
        return verify(code, tokens, mode)

    def vocabulary(self) -> list[str]:
        return structural_vocabulary()


def asdl_table() -> dict[str, tuple[str, tuple[tuple[str, str, str], ...]]]:
    """Python's ASDL as data: ``{node type: (category, ((field, ASDL type, qualifier '' | '?' | '*'), ...))}`` for
    every concrete node class (operators and contexts have no fields). The graph repair grammar reads it."""
    table = {}
    for cls in _concrete_classes():
        base = cls.__bases__[0]
        category = base.__name__ if base is not ast.AST else cls.__name__
        table[cls.__name__] = (category, tuple(_parse_signature(cls)))
    return table


# ---------------------------------------------------------------------------------------------
# Public grammar tables: what a grammar over the compact form reads (ml.constrained.python_grammar),
# as read-only views of the tables above, so that the codec stays the one source of field order,
# defaults and categories.
# ---------------------------------------------------------------------------------------------

NODE_SPECS: Mapping[str, NodeSpec] = MappingProxyType(_SPEC_BY_NAME)
"""Node-type token (``"<Call>"``) → its :class:`NodeSpec`."""

OPERATOR_TOKENS: Mapping[str, frozenset[str]] = MappingProxyType(
    {cat: frozenset(tokens) for cat, tokens in _OPS_BY_CAT.items()}
)
"""Singleton category (``operator``, ``unaryop``, ``cmpop``, ``boolop``, ``expr_context``) → its tokens
(``<op:Add>``, ..., ``<ctx:Load>``)."""

OPERATOR_CATEGORIES: Mapping[str, str] = MappingProxyType({tok: cat for tok, (cat, _) in _SINGLETON_BY_TOKEN.items()})
"""Operator / ctx token → its singleton category (the inverse of :data:`OPERATOR_TOKENS`)."""

CONST_SINGLETON_TOKENS: frozenset[str] = frozenset(_CONST_SINGLETONS)
"""The constant shorthands ``<const:True>``, ``<const:False>``, ``<const:None>``, ``<const:Ellipsis>``."""


def node_tags(category: str) -> frozenset[str]:
    """The node-type tokens of an ASDL category (``"expr"``, ``"stmt"``, ...); empty for an unknown one."""
    return frozenset(_CAT_TYPES.get(category, ()))
