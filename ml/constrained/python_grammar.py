"""Grammar-constrained decoding for the compact Python AST text form.

``PythonAstGrammar`` is a pushdown automaton over the *model's* tokens (BPE pieces and the added
AST tokens) that only admits text that stays a prefix of a compact token sequence which decodes
(``decode_tree``) to a tree that ``compile()`` accepts; ``GrammarLogitsProcessor`` applies it
during ``model.generate``.

Why our own automaton and not llguidance / XGrammar: those engines take a context-free grammar
(EBNF / JSON schema / regex) over characters, but the compact form is positional and
context-sensitive: which token may come next depends on the ASDL table (per-type field order,
elision of trailing defaults with a single ``<close>`` that may also end a list), on inferred
``ctx`` (Store/Del targets), on counts across fields (``Dict`` keys vs values, ``Compare`` ops vs
comparators, ``kw_defaults`` vs ``kwonlyargs``, positional defaults vs args) and on the enclosing
scope (``await`` only in ``async def``, ``break`` only in loops, no duplicate argument or keyword
names). Writing that as a CFG would need one copy of the expression grammar per context and would
still miss the counting and uniqueness rules; the tables live in ``ml.codec.python_ast`` and are
imported here, so the automaton follows the codec without a second grammar to keep in sync.

Speed: a state's mask depends only on a small *mask key* (lexer mode + DFA state of the payload
being written + whether it may end here + the interned signature of the next grammar slot). Masks
are built once per key by running every vocabulary piece through the same character-level
simulation that ``advance`` uses, and cached, so a step is a dict lookup of a ready bool tensor.

How to read it (one of the two files allowed past 500 lines: one automaton whose parts share its
state encoding). Sections, in order: *tables from the codec* (only the public grammar tables of
``ml.codec.python_ast``: ``NODE_SPECS``, ``OPERATOR_TOKENS``, ...; plus env flags); *character
automata* of the payloads (identifiers, numbers, strings, ``<const>`` reprs); *slot signatures*
(``Sig``: what may come at a grammar position, interned); *the pushdown automaton* (stack symbols
are plain tuples, documented where the section opens; ``_field_sym`` is the per-field rule table);
*feeding codec tokens* (``_feed``: one codec token moves the stack); *the grammar over the
vocabulary* (``PythonAstGrammar``: masks per mask key, ``_sim`` runs a vocabulary piece through the
character automata); *transformers integration* (``GrammarLogitsProcessor``). Start at
``PythonAstGrammar`` and ``_feed``; the tables above them answer "what may come next".

Restrictions (sound but not complete): no ``match``, ``try/except*``, ``global``, ``nonlocal``,
no explicit ``<ctx:*>`` modifiers or ``type_comment``s, ASCII identifiers only, ``<const>``
payloads are bytes literals or ``inf``; ``yield`` is not generated inside ``async def``; ``Slice``
only directly in a subscript (or a tuple there); ``Starred`` only in tuple/list/set elements, call
arguments and class bases; ``FormattedValue`` only in f-strings. The start is always
``<Module><indent>`` + one (async) function + ``<dedent><close>``.
"""

from __future__ import annotations

import keyword
from functools import cache

import torch

from ml.codec import python_ast as pa
from ml.codec.tokens import is_raw_opener

__all__ = ["PythonAstGrammar", "GrammarState"]

# ---------------------------------------------------------------------------------------------
# Tables from the codec.
# ---------------------------------------------------------------------------------------------

SPECS = pa.NODE_SPECS  # "<Call>" -> spec
K_NODE, K_OPTNODE, K_LIST, K_STMTS = pa.K_NODE, pa.K_OPTNODE, pa.K_LIST, pa.K_STMTS
K_IDENT, K_OPTIDENT, K_IDLIST = pa.K_IDENT, pa.K_OPTIDENT, pa.K_IDLIST
K_STR, K_OPTSTR, K_INT, K_OPTINT, K_CONST, K_OP, K_OPLIST = (
    pa.K_STR, pa.K_OPTSTR, pa.K_INT, pa.K_OPTINT, pa.K_CONST, pa.K_OP, pa.K_OPLIST,
)

OPS_BY_CAT = pa.OPERATOR_TOKENS
SHORT_OPS = OPS_BY_CAT["operator"] | OPS_BY_CAT["unaryop"] | OPS_BY_CAT["cmpop"] | OPS_BY_CAT["boolop"]
CONST_SINGLETONS = pa.CONST_SINGLETON_TOKENS
EXPR_TAGS = pa.node_tags("expr")
STMT_TAGS = pa.node_tags("stmt")

FORBIDDEN_NAMES = frozenset(keyword.kwlist) | {"__debug__"}

# Env flags.
F_FUNC = 1  # return allowed
F_ASYNC = 2  # await / async for / async with / async comprehensions
F_GEN = 4  # yield allowed
F_LOOP = 8  # break / continue
F_COMP = 16  # inside a comprehension: no yield, no walrus
F_ANN = 32  # annotation: no yield / await / walrus
F_LAMBDA = 64  # arguments of a lambda: no annotations
F_DEPTH1 = 256  # statement-block nesting depth, counted in the high bits
MAX_BLOCKS = 14  # CPython allows 20 static blocks per code object (a try/with level may take 3)
COMPOUND = frozenset(
    ("<For>", "<AsyncFor>", "<While>", "<If>", "<With>", "<AsyncWith>", "<Try>", "<FunctionDef>",
     "<AsyncFunctionDef>", "<ClassDef>")
)

# Allow bits of an expression slot.
A_STAR = 1
A_SLICE = 2
A_NONE = 4  # <none> admitted (optional field or None element)
A_SIMPLE = 8  # Name / Attribute / Subscript only (AugAssign / AnnAssign targets)
A_NAME = 16  # Name only (walrus target)
A_ARGNAME = 32  # identifier must be new among the arguments
A_KWNAME = 64  # identifier must be new among the call's keywords

LOAD, STORE, DEL = 0, 1, 2
_CTX_OF = {"Load": LOAD, "Store": STORE, "Del": DEL}

# Min lengths of list fields / non-empty statement bodies.
MIN_LEN = {
    ("Delete", "targets"): 1, ("Assign", "targets"): 1, ("BoolOp", "values"): 2,
    ("Compare", "ops"): 1, ("Compare", "comparators"): 1, ("Import", "names"): 1, ("ImportFrom", "names"): 1,
    ("With", "items"): 1, ("AsyncWith", "items"): 1, ("ListComp", "generators"): 1,
    ("SetComp", "generators"): 1, ("DictComp", "generators"): 1, ("GeneratorExp", "generators"): 1,
}
MAX_WITH_ITEMS = 4
NAMES_SPECS = ("arguments", "Call", "ClassDef")  # nodes tracking names for uniqueness

# Payload kinds (plain payloads) and lexer modes.
P_EXPR, P_IDENT, P_DOTTED = "expr", "ident", "dotted"
INT_SETS = {
    "conv": ("-1", "115", "114", "97"),
    "bool": ("0", "1"),
    "zero": ("0",),
    "level": tuple(str(i) for i in range(10)),
}
PLAIN_KINDS = frozenset((P_EXPR, P_IDENT, P_DOTTED, "num")) | frozenset("int:" + k for k in INT_SETS)
M_BOUND, M_PEND, M_PLAIN, M_RAW, M_SEP = range(5)
SEP = b"<sep>"
NUM_MAX = 60  # longest number payload

# ---------------------------------------------------------------------------------------------
# Character automata of the payloads (over bytes).
# ---------------------------------------------------------------------------------------------

_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIG = frozenset(b"0123456789")
_ALNUM = _ALPHA | _DIG
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PRINT = frozenset(range(0x20, 0x7F))
SP = 0x20
LT = 0x3C
BS = 0x5C


def _start_kind(pkind: str, c: int):
    """(sub-kind, dfa state) of a plain payload of ``pkind`` whose first byte is ``c``; None if invalid."""
    if pkind == P_EXPR:
        if c in _DIG:
            return ("num", 1)
        if c in _ALPHA:
            return ("ident", 1)
        return None
    if pkind == P_IDENT:
        return ("ident", 1) if c in _ALPHA else None
    if pkind == P_DOTTED:
        return ("dotted", 1) if c in _ALPHA else None
    if pkind == "num":
        return ("num", 1) if c in _DIG else None
    if not pkind.startswith("int:"):
        return None
    # int set
    chars = bytes([c]).decode("latin-1")
    return (pkind, chars) if any(s.startswith(chars) for s in INT_SETS[pkind[4:]]) else None


def _step(kind: str, s, c: int):
    """Next DFA state of a plain payload, or None."""
    if kind == "ident":
        return 1 if c in _ALNUM else None
    if kind == "dotted":
        if s == 1:
            return 1 if c in _ALNUM else (2 if c == 0x2E else None)
        return 1 if c in _ALPHA else None
    if kind == "num":
        if c in _DIG:
            return {1: 1, 2: 3, 3: 3, 4: 6, 5: 6, 6: 6}.get(s)
        if c == 0x2E:  # .
            return 2 if s == 1 else None
        if c == 0x65:  # e
            return 4 if s in (1, 3) else None
        if c in (0x2B, 0x2D):  # + -
            return 5 if s == 4 else None
        if c == 0x6A:  # j
            return 7 if s in (1, 3, 6) else None
        return None
    text = s + chr(c)
    return text if any(x.startswith(text) for x in INT_SETS[kind[4:]]) else None


def _accepting(kind: str, s) -> bool:
    if kind == "ident":
        return True
    if kind == "dotted":
        return s == 1
    if kind == "num":
        return s in (1, 3, 6, 7)
    return s in INT_SETS[kind[4:]]


# <const> payloads: a bytes literal (b'..' / b"..") or inf, with the payload escape layer on top
# (``\\`` is a backslash, ``\l`` a ``<``). States: (escape pending, inner state).
def _const_inner(s, c: int):
    if s == "start":
        return "b" if c == 0x62 else ("i" if c == 0x69 else None)
    if s == "i":
        return "in" if c == 0x6E else None
    if s == "in":
        return "inf" if c == 0x66 else None
    if s == "b":
        return ("body", c) if c in (0x27, 0x22) else None
    if s in ("inf", "end"):
        return None
    tag, q = s[0], s[1]
    if tag == "body":
        if c == q:
            return "end"
        if c == BS:
            return ("esc", q)
        return s if c in _PRINT else None
    if tag == "esc":
        if c in b"\\'\"nrt":
            return ("body", q)
        return ("hex1", q) if c == 0x78 else None
    if tag == "hex1":
        return ("hex2", q) if c in _HEX else None
    if tag == "hex2":
        return ("body", q) if c in _HEX else None
    return None


def _const_step(state, c: int):
    esc, inner = state
    if esc:
        inner = _const_inner(inner, LT if c == 0x6C else c)
        return None if inner is None else (False, inner)
    if c == BS:
        return (True, inner)
    if c == LT:
        return None
    inner = _const_inner(inner, c)
    return None if inner is None else (False, inner)


def _const_accepting(state) -> bool:
    return not state[0] and state[1] in ("end", "inf")


CONST_START = (False, "start")

# ---------------------------------------------------------------------------------------------
# Slot signatures: what may come at a grammar position (interned).
# ---------------------------------------------------------------------------------------------


class Sig:
    __slots__ = ("id", "structs", "pkind", "closing")

    def __repr__(self) -> str:  # pragma: no cover - debugging
        return f"Sig({self.id}, {sorted(self.structs)[:8]}, {self.pkind})"


_SIGS: dict = {}


def _sig(structs: frozenset, pkind) -> Sig:
    key = (structs, pkind)
    s = _SIGS.get(key)
    if s is None:
        s = Sig()
        s.id, s.structs, s.pkind = len(_SIGS), structs, pkind
        _SIGS[key] = s
    return s


DONE_SIG = _sig(frozenset(), None)

ENDERS = frozenset(("<end>", "<close>", "<dedent>"))
NONE_SET = frozenset(("<none>",))
# Tokens that never open a node: what a budget-limited ("closing") state is steered to.
CLOSERS = frozenset(
    ("<end>", "<close>", "<dedent>", "<none>", "<indent>", "<const:None>", "<const:True>",
     "<const:False>", "<Pass>", "<Break>", "<Continue>", "<str>")
)

# ---------------------------------------------------------------------------------------------
# The pushdown automaton over codec tokens. Symbols on the stack (top last):
#   ('V', vk, ctx, flags, allow, fi)            one value of kind vk
#   ('F', spec, j, ctx, flags, counts, names)   fields order[j:] of a node
#   ('L', ek, ctx, flags, allow, fi, count, mn, mx, stars)   list elements until <end>/<close>
#   ('S', flags, count, mn, mx)                 statements until <dedent>
#   ('K', tok)                                   exactly tok
# ---------------------------------------------------------------------------------------------


def _expr_structs(ctx: int, flags: int, allow: int) -> frozenset:
    return _expr_structs_c(ctx, flags & (F_ASYNC | F_GEN | F_COMP | F_ANN), allow)


@cache
def _expr_structs_c(ctx: int, flags: int, allow: int) -> frozenset:
    if allow & A_NAME:
        out = {"<Name>"}
    elif ctx != LOAD or allow & A_SIMPLE:
        out = {"<Name>", "<Attribute>", "<Subscript>"}
        if not allow & A_SIMPLE:
            out |= {"<Tuple>", "<List>"}
            if ctx == STORE and allow & A_STAR:
                out.add("<Starred>")
    else:
        out = set(EXPR_TAGS) | SHORT_OPS | CONST_SINGLETONS | {"<str>", "<const>"}
        out.discard("<FormattedValue>")
        if not allow & A_STAR:
            out.discard("<Starred>")
        if not allow & A_SLICE:
            out.discard("<Slice>")
        if not (flags & F_ASYNC) or flags & F_ANN:
            out.discard("<Await>")
        if not (flags & F_GEN) or flags & (F_COMP | F_ANN | F_ASYNC):
            out.discard("<Yield>")
            out.discard("<YieldFrom>")
        if flags & (F_COMP | F_ANN):
            out.discard("<NamedExpr>")
    if allow & A_NONE:
        out.add("<none>")
    return frozenset(out)


_EXCLUDED_STMTS = frozenset(("<Match>", "<TryStar>", "<Global>", "<Nonlocal>"))


@cache
def _stmt_structs(flags: int) -> frozenset:
    out = (set(STMT_TAGS) - _EXCLUDED_STMTS) | _expr_structs(LOAD, flags, 0)
    if not flags & F_FUNC:
        out.discard("<Return>")
    if not flags & F_LOOP:
        out.discard("<Break>")
        out.discard("<Continue>")
    if not flags & F_ASYNC:
        out.discard("<AsyncFor>")
        out.discard("<AsyncWith>")
    if flags // F_DEPTH1 >= MAX_BLOCKS:
        out -= COMPOUND
    return frozenset(out)


def _count(counts, i, j):
    return counts[i] if i < j else 0


def _can_elide(spec, j: int, counts) -> bool:
    """May fields order[j:] all be left out (one <close>)? ``counts`` holds the fields before j."""
    if j < spec.elidable_from:
        return False
    if j >= len(spec.order):
        return True
    name = spec.name
    order = spec.order
    for k in range(j, len(order)):
        f = order[k]
        if f[0] == "body" or MIN_LEN.get((name, f[0]), 0):
            return False
    if name == "Dict":
        return _count(counts, 0, j) == 0
    if name == "arguments":
        if j <= 5 and _count(counts, 4, j):
            return False
        return _count(counts, 1, j) <= _count(counts, 0, j)
    if name == "Try":
        return _count(counts, 1, j) > 0
    if name == "AnnAssign":
        return _count(counts, 0, j) == 2
    return True


def _field_sym(spec, j: int, ctx: int, flags: int, counts):
    """The symbol for field order[j] of a node being read."""
    f = spec.order[j]
    fname, kind, cat = f[0], f[2], f[3]
    name = spec.name
    cctx = ctx if spec.passes_ctx else _CTX_OF[type(f[4]).__name__]
    allow = 0
    fl = flags
    if kind == K_STMTS:
        mn, mx = (1 if fname == "body" else 0), None
        if name in ("With", "AsyncWith"):
            inc = counts[0]
        elif name == "If":
            inc = 0
        elif name == "ExceptHandler" or fname == "finalbody":
            inc = 2
        else:
            inc = 1
        fl = flags + inc * F_DEPTH1
        if name in ("FunctionDef", "AsyncFunctionDef"):
            fl = F_FUNC | (F_ASYNC if name == "AsyncFunctionDef" else F_GEN)
        elif name == "ClassDef":
            fl = 0
        elif name in ("For", "AsyncFor", "While") and fname == "body":
            fl = fl | F_LOOP
        elif name == "Try" and counts[1] == 0:
            mn, mx = (0, 0) if fname == "orelse" else (1, None)
        return ("V", "indent", LOAD, fl, (mn, mx), j)
    if kind in (K_LIST, K_IDLIST, K_OPLIST):
        mn, mx = MIN_LEN.get((name, fname), 0), None
        if kind == K_OPLIST:
            return ("L", "op:" + cat, LOAD, flags, 0, j, 0, mn, mx, 0)
        if name == "JoinedStr":
            return ("L", "fstr", LOAD, flags, 0, j, 0, mn, mx, 0)
        if cat == "expr":
            if name in ("Tuple", "List", "Set") or (name, fname) in (("Call", "args"), ("ClassDef", "bases")):
                if cctx != DEL:
                    allow |= A_STAR
            if name == "Tuple" and ctx == LOAD and counts is not None and counts[-1] == -1:
                allow |= A_SLICE  # a tuple directly in a subscript
            if (name, fname) in (("Dict", "keys"), ("arguments", "kw_defaults")):
                allow |= A_NONE
            if (name, fname) == ("Dict", "values"):
                mn = mx = counts[0]
            elif (name, fname) == ("Compare", "comparators"):
                mn = mx = counts[1]
            elif (name, fname) == ("arguments", "kw_defaults"):
                mn = mx = counts[4]
            if name in ("ListComp", "SetComp", "GeneratorExp", "DictComp"):
                fl = flags | F_COMP
            return ("L", "expr", cctx, fl, allow, j, 0, mn, mx, 0)
        if (name, fname) == ("arguments", "posonlyargs"):
            mn = max(0, counts[1] - counts[0])
        if name in ("ListComp", "SetComp", "GeneratorExp", "DictComp"):
            fl = flags | F_COMP
        if name in ("With", "AsyncWith"):
            mx = MAX_WITH_ITEMS
        if name == "Try" and fname == "handlers":
            return ("L", "excepthandler", LOAD, flags, 0, j, 0, mn, mx, 0)
        return ("L", cat, LOAD, fl, 0, j, 0, mn, mx, 0)
    opt = kind in (K_OPTNODE, K_OPTIDENT, K_OPTSTR, K_OPTINT)
    if opt:
        allow |= A_NONE
    if kind in (K_IDENT, K_OPTIDENT):
        if name == "arg":
            allow |= A_ARGNAME
        elif name == "keyword":
            allow |= A_KWNAME
        vk = "dotted" if (name, fname) in (("alias", "name"), ("ImportFrom", "module")) else "ident"
        return ("V", vk, LOAD, flags, allow, j)
    if kind in (K_INT, K_OPTINT):
        if fname == "conversion":
            s = "conv"
        elif fname == "level":
            s = "level"
        elif fname == "is_async":
            s = "bool" if flags & F_ASYNC else "zero"
        elif fname == "simple":
            s = "bool" if counts[0] == 2 else "zero"
        else:
            s = "zero"
        return ("V", "int:" + s, LOAD, flags, allow, j)
    if kind == K_OP:
        return ("V", "op:" + cat, LOAD, flags, 0, j)
    if kind == K_CONST:
        return ("V", "const", LOAD, flags, 0, j)
    if kind in (K_STR, K_OPTSTR):
        return ("V", "strfield", LOAD, flags, allow, j)
    # a node
    if cat != "expr":
        if cat == "arguments" and name == "Lambda":
            fl = flags | F_LAMBDA
        return ("V", cat, LOAD, fl, allow, j)
    if name == "Raise" and fname == "cause" and counts[0] == 0:
        return ("V", "none", LOAD, flags, 0, j)
    if name == "FormattedValue" and fname == "format_spec":
        return ("V", "jstr", LOAD, flags, allow, j)
    if name in ("FunctionDef", "AsyncFunctionDef") and fname == "returns":
        fl = flags | F_ANN
    elif name == "arg" or (name == "AnnAssign" and fname == "annotation"):
        fl = flags | F_ANN
    elif name == "Lambda":
        fl = F_GEN  # the lambda body: its own (non-async) function scope
    elif name in ("ListComp", "SetComp", "GeneratorExp", "DictComp"):
        fl = flags | F_COMP
    if (name, fname) in (("AugAssign", "target"), ("AnnAssign", "target")):
        allow |= A_SIMPLE
    elif (name, fname) == ("NamedExpr", "target"):
        allow |= A_NAME
    elif (name, fname) == ("Subscript", "slice"):
        allow |= A_SLICE
    return ("V", "expr", cctx, fl, allow, j)


def _node_start(spec, ctx: int, flags: int, allow: int):
    """The F symbol of a node whose type token was read (None when it has no fields)."""
    if not spec.order:
        return None
    counts = [0] * len(spec.order)
    if spec.name == "Tuple" and allow & A_SLICE:
        counts.append(-1)  # marker: a tuple in a subscript (elements may be slices)
    return ("F", spec, 0, ctx, flags, tuple(counts), frozenset())


class PDAError(ValueError):
    pass


def _top_slot(stack) -> tuple[Sig, frozenset | None]:
    """(signature, forbidden identifiers) of the position on top of ``stack``."""
    if not stack:
        return DONE_SIG, None
    sym = stack[-1]
    t = sym[0]
    if t == "K":
        return _sig(frozenset((sym[1],)), None), None
    if t == "S":
        _, flags, count, mn, mx = sym
        structs = set()
        if mx is None or count < mx:
            structs |= _stmt_structs(flags)
        if count >= mn:
            structs.add("<dedent>")
        pk = P_EXPR if (mx is None or count < mx) else None
        return _sig(frozenset(structs), pk), FORBIDDEN_NAMES
    if t == "L":
        ek, ctx, flags, allow, fi, count, mn, mx, stars = sym[1:]
        sig, forbid = _elem_slot(ek, ctx, flags, allow if not stars else allow & ~A_STAR, stack)
        if mx is not None and count >= mx:
            sig = DONE_SIG
        ends = set()
        if count >= mn:
            ends.add("<end>")
            parent = stack[-2]
            if fi >= 0 and _can_elide(parent[1], fi + 1, parent[5][:fi] + (count,) + parent[5][fi + 1 :]):
                ends.add("<close>")
        return _sig(sig.structs | frozenset(ends), sig.pkind), forbid
    if t == "F":
        _, spec, j, ctx, flags, counts, names = sym
        sub = _field_sym(spec, j, ctx, flags, counts)
        sig, forbid = _sym_slot(sub, stack)
        if _can_elide(spec, j, counts):
            return _sig(sig.structs | {"<close>"}, sig.pkind), forbid
        return sig, forbid
    return _sym_slot(sym, stack)


def _names_frame(stack, limit=4):
    for i in range(len(stack) - 1, max(-1, len(stack) - 1 - limit), -1):
        sym = stack[i]
        if sym[0] == "F" and sym[1].name in NAMES_SPECS:
            return i
    return -1


def _sym_slot(sym, stack):
    if sym[0] == "L":
        # a list field about to start: elements or its end (the node decides about <close>)
        ek, ctx, flags, allow, fi, count, mn, mx, stars = sym[1:]
        sig, forbid = _elem_slot(ek, ctx, flags, allow, stack)
        ends = {"<end>"} if mn == 0 else set()
        if mx == 0:
            sig = DONE_SIG
        if mn == 0 and stack and stack[-1][0] == "F":
            parent = stack[-1]
            if _can_elide(parent[1], fi + 1, parent[5][:fi] + (0,) + parent[5][fi + 1 :]):
                ends.add("<close>")
        return _sig(sig.structs | frozenset(ends), sig.pkind), forbid
    _, vk, ctx, flags, allow, fi = sym
    return _value_slot(vk, ctx, flags, allow, stack)


def _elem_slot(ek, ctx, flags, allow, stack):
    return _value_slot(ek, ctx, flags, allow, stack)


def _value_slot(vk, ctx, flags, allow, stack):
    if vk == "indent":
        return _sig(frozenset(("<indent>",)), None), None
    none = frozenset(("<none>",)) if allow & A_NONE else frozenset()
    if vk == "expr":
        structs = _expr_structs(ctx, flags, allow)
        pk = P_EXPR if (ctx == LOAD and not allow & (A_NAME | A_SIMPLE)) else P_IDENT
        return _sig(structs, pk), FORBIDDEN_NAMES
    if vk == "stmt":
        return _sig(_stmt_structs(flags), P_EXPR), FORBIDDEN_NAMES
    if vk in ("ident", "dotted"):
        forbid = FORBIDDEN_NAMES
        if allow & (A_ARGNAME | A_KWNAME):
            i = _names_frame(stack)
            if i >= 0:
                forbid = FORBIDDEN_NAMES | stack[i][6]
        return _sig(none, P_IDENT if vk == "ident" else P_DOTTED), forbid
    if vk.startswith("int:"):
        return _sig(none, vk), None
    if vk.startswith("op:"):
        return _sig(OPS_BY_CAT[vk[3:]], None), None
    if vk == "const":
        return _sig(CONST_SINGLETONS | {"<str>", "<const>"}, "num"), None
    if vk == "indent":
        return _sig(frozenset(("<indent>",)), None), None
    if vk == "arg":
        structs = none if flags & F_LAMBDA else none | {"<arg>"}
        forbid = FORBIDDEN_NAMES
        i = _names_frame(stack)
        if i >= 0:
            forbid = FORBIDDEN_NAMES | stack[i][6]
        return _sig(structs, P_IDENT), forbid
    if vk == "alias":
        return _sig(none | {"<alias>"}, P_DOTTED), FORBIDDEN_NAMES
    if vk == "excepthandler":
        return _sig(frozenset(("<ExceptHandler>",)), None), None
    if vk == "fstr":
        return _sig(frozenset(("<str>", "<FormattedValue>")), None), None
    if vk == "jstr":
        return _sig(none | {"<JoinedStr>"}, None), None
    if vk == "none":
        return _sig(frozenset(("<none>",)), None), None
    if vk == "strfield":
        return _sig(none | {"<str>"}, None), None
    if vk == "rawstr" or vk == "rawconst":
        return _sig(frozenset(), vk), None
    if vk == "funcdef":
        return _sig(frozenset(("<FunctionDef>", "<AsyncFunctionDef>")), None), None
    if vk == "mod":
        return _sig(frozenset(("<Module>",)), None), None
    # untagged products: their first field
    spec = SPECS["<" + vk + ">"]
    sub = _field_sym(spec, 0, LOAD, flags, (0,) * len(spec.order))
    sig, forbid = _sym_slot(sub, stack + [("F", spec, 0, LOAD, flags, (0,) * len(spec.order), frozenset())])
    if _can_elide(spec, 0, (0,) * len(spec.order)):
        sig = _sig(sig.structs | {"<close>"}, sig.pkind)
    return sig, forbid


# ---------------------------------------------------------------------------------------------
# Feeding codec tokens to the stack.
# ---------------------------------------------------------------------------------------------


def _presence(tok, payload_kind):
    if tok == "<none>":
        return 0
    if tok == "<Name>" or (tok is None and payload_kind == "ident"):
        return 2
    return 1


def _feed(stack: list, tok: str | None, pkind: str | None = None, text: str = "") -> None:
    """Consume one codec token (structural ``tok``, or a payload of sub-kind ``pkind``) in place."""
    while True:
        sym = stack[-1]
        t = sym[0]
        if t == "K":
            stack.pop()
            break
        if t == "S":
            _, flags, count, mn, mx = sym
            if tok == "<dedent>":
                stack.pop()
                break
            stack[-1] = ("S", flags, count + 1, mn, mx)
            stack.append(("V", "stmt", LOAD, flags, 0, -1))
            continue
        if t == "L":
            ek, ctx, flags, allow, fi, count, mn, mx, stars = sym[1:]
            if tok == "<end>" or tok == "<close>":
                stack.pop()
                if fi >= 0:
                    parent = stack[-1]
                    counts = parent[5][:fi] + (count,) + parent[5][fi + 1 :]
                    if tok == "<close>":
                        stack.pop()
                    else:
                        stack[-1] = parent[:5] + (counts,) + parent[6:]
                break
            if tok == "<Starred>" and ctx == STORE:
                stars += 1
            stack[-1] = ("L", ek, ctx, flags, allow, fi, count + 1, mn, mx, stars)
            if stars:
                allow &= ~A_STAR
            stack.append(("V", ek, ctx, flags, allow, -1))
            continue
        if t == "F":
            _, spec, j, ctx, flags, counts, names = sym
            if tok == "<close>" and _can_elide(spec, j, counts):
                stack.pop()
                break
            sub = _field_sym(spec, j, ctx, flags, counts)
            counts = counts[:j] + (_presence(tok, pkind),) + counts[j + 1 :]
            stack[-1] = ("F", spec, j + 1, ctx, flags, counts, names)
            if spec.name == "ExceptHandler" and j == 0 and tok == "<none>":
                lst = stack[-2]  # the handlers list: a bare except must be the last handler
                stack[-2] = lst[:8] + (lst[6],) + lst[9:]
            stack.append(sub)
            continue
        # V
        _, vk, ctx, flags, allow, fi = sym
        if vk in ("keyword", "withitem", "comprehension", "arguments"):
            spec = SPECS["<" + vk + ">"]
            stack[-1] = ("F", spec, 0, LOAD, flags, (0,) * len(spec.order), frozenset())
            continue
        if tok is None:  # a payload
            if (vk in ("ident", "arg") and allow & (A_ARGNAME | A_KWNAME)) or vk == "arg":
                i = _names_frame(stack)
                if i >= 0:
                    f = stack[i]
                    stack[i] = f[:6] + (f[6] | {text},)
            stack.pop()
            break
        if vk == "indent":
            stack[-1] = ("S", flags, 0, allow[0], allow[1])
            break
        if vk == "mod":
            stack[-1:] = [("K", "<close>"), ("K", "<dedent>"), ("V", "funcdef", LOAD, 0, 0, -1), ("K", "<indent>")]
            break
        stack.pop()
        if tok == "<none>" or tok in CONST_SINGLETONS:
            break
        if tok == "<str>":
            stack.append(("V", "rawstr", LOAD, flags, 0, -1))
            break
        if tok == "<const>":
            stack.append(("V", "rawconst", LOAD, flags, 0, -1))
            break
        if vk.startswith("op:"):
            break
        if tok in SHORT_OPS:
            cat = pa.OPERATOR_CATEGORIES[tok]
            e = ("V", "expr", LOAD, flags, 0, -1)
            if cat == "boolop":
                stack.append(("L", "expr", LOAD, flags, 0, -1, 0, 2, None, 0))
            elif cat == "unaryop":
                stack.append(e)
            else:
                stack.append(e)
                stack.append(e)
            break
        spec = SPECS[tok]
        f = _node_start(spec, ctx, flags, allow)
        if f is not None:
            stack.append(f)
        break
    # pop finished nodes
    while stack:
        top = stack[-1]
        if top[0] == "F" and top[2] >= len(top[1].order):
            stack.pop()
        else:
            break


_COUNTED = frozenset((("Dict", 0), ("Compare", 1), ("arguments", 1), ("arguments", 4)))


def _cost(stack) -> int:
    """A rough upper bound of the tokens needed to finish ``stack`` in closing mode."""
    total = 0
    prev = None
    for sym in stack:
        t = sym[0]
        if t == "K":
            total += 1
        elif t == "S":
            total += 1 + 3 * max(0, sym[3] - sym[2])
        elif t == "L":
            total += 1 + 3 * max(0, sym[7] - sym[6])
            if prev is not None and prev[0] == "F" and (prev[1].name, sym[5]) in _COUNTED:
                total += 3 * sym[6]  # elements that a later list must match
        elif t == "F":
            spec, j, counts = sym[1], sym[2], sym[5]
            total += 1 + 3 * (len(spec.order) - j)
            if spec.name == "arguments":
                if 1 < j <= 6:
                    total += 3 * max(0, counts[1] - counts[0])
                if 4 < j <= 5:
                    total += 3 * counts[4]
        else:
            total += 3
        prev = sym
    return total


# ---------------------------------------------------------------------------------------------
# The grammar over the tokenizer's vocabulary.
# ---------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class GrammarState:
    """Where a generated sequence stands. ``advance`` returns a new state (this one is unchanged)."""

    __slots__ = ("stack", "mode", "kind", "dstate", "text", "sig", "forbid", "budget", "finished")

    def copy(self) -> GrammarState:
        s = GrammarState.__new__(GrammarState)
        s.stack = list(self.stack)
        s.mode, s.kind, s.dstate, s.text = self.mode, self.kind, self.dstate, self.text
        s.sig, s.forbid, s.budget, s.finished = self.sig, self.forbid, self.budget, self.finished
        return s


class PythonAstGrammar:
    """Token-level constraint for the compact Python AST text form (see the module docstring)."""

    MAX_DEPTH = 48
    MARGIN = 6

    def __init__(self, tokenizer, mode: str = "compact", vocab_size: int | None = None) -> None:
        if mode != "compact":
            raise ValueError("only the compact mode is supported")
        self.tokenizer = tokenizer
        n = len(tokenizer)
        self.vocab_size = max(n, vocab_size or 0)
        self.eos_id = tokenizer.eos_token_id
        vocab = tokenizer.get_vocab()
        known = set(pa.structural_vocabulary())
        self.struct_id: dict[str, int] = {t: vocab[t] for t in known if t in vocab}
        self.id_struct: dict[int, str] = {i: t for t, i in self.struct_id.items()}
        specials = set(tokenizer.all_special_ids)
        added = set(tokenizer.get_added_vocab().values())
        dec = {c: b for b, c in _bytes_to_unicode().items()}
        self.pieces: dict[int, bytes] = {}
        for tok, i in vocab.items():
            if i in self.id_struct or i in specials or i in added or i >= n:
                continue
            try:
                self.pieces[i] = bytes(dec[c] for c in tok)
            except KeyError:
                continue  # not a byte-level piece: never allowed
        self._piece_items = sorted(self.pieces.items())
        self._masks: dict = {}
        self._empty = torch.zeros(self.vocab_size, dtype=torch.bool)
        self._eos_mask = self._empty.clone()
        if self.eos_id is not None:
            self._eos_mask[self.eos_id] = True

    # -- states -------------------------------------------------------------------------------

    def initial_state(self, budget: int | None = None) -> GrammarState:
        s = GrammarState()
        s.stack = [("V", "mod", LOAD, 0, 0, -1)]
        s.mode, s.kind, s.dstate, s.text = M_BOUND, None, None, b""
        s.sig, s.forbid = _top_slot(s.stack)
        s.budget = budget
        s.finished = False
        return s

    def is_complete(self, state: GrammarState) -> bool:
        return not state.stack and state.mode == M_BOUND

    def _can_end(self, state: GrammarState) -> bool:
        m = state.mode
        if m == M_PLAIN:
            if not _accepting(state.kind, state.dstate):
                return False
            if state.forbid is not None and state.text.decode("latin-1") in state.forbid:
                return False
            return True
        if m == M_RAW:
            return state.kind == "str" or _const_accepting(state.dstate)
        return m == M_BOUND

    def _closing(self, state: GrammarState) -> bool:
        if len(state.stack) > self.MAX_DEPTH:
            return True
        if state.budget is None:
            return False
        return state.budget <= _cost(state.stack) + self.MARGIN

    def key(self, state: GrammarState):
        if state.finished:
            return "finished"
        if self.is_complete(state):
            return "complete"
        cont_ok = not (state.mode == M_PLAIN and state.kind == "num" and len(state.text) >= NUM_MAX)
        return (state.mode, state.kind, state.dstate, self._can_end(state), cont_ok, state.sig, self._closing(state))

    def allowed(self, state: GrammarState) -> torch.Tensor:
        k = self.key(state)
        m = self._masks.get(k)
        if m is None:
            m = self._masks[k] = self._build(k)
        return m

    # -- masks --------------------------------------------------------------------------------

    def _build(self, key) -> torch.Tensor:
        if key in ("finished", "complete"):
            return self._eos_mask
        mode, kind, dstate, can_end, cont_ok, sig, closing = key
        structs: frozenset = frozenset()
        if mode == M_BOUND or (mode in (M_PLAIN, M_RAW) and can_end):
            structs = sig.structs
        pieces_ok = True
        must_end = closing and mode in (M_PLAIN, M_RAW) and can_end
        if closing:
            limited = (structs & ENDERS) or (structs & NONE_SET) or (structs & CLOSERS)
            if limited:
                structs = limited
                if mode == M_BOUND or (mode in (M_PLAIN, M_RAW) and can_end):
                    pieces_ok = False
            elif mode in (M_PLAIN, M_RAW) and can_end and structs:
                pieces_ok = False
        ids = [self.struct_id[t] for t in structs if t in self.struct_id]
        if pieces_ok:
            good, finishing = [], []
            for i, piece in self._piece_items:
                r = _sim(piece, mode, kind, dstate, can_end, cont_ok, sig)
                if r is not None and (not must_end or r[0] is not None):
                    good.append(i)
                    if closing and mode in (M_PLAIN, M_RAW) and not can_end and r[2] == mode and _final_ok(r):
                        finishing.append(i)
            ids += finishing if finishing else good
        mask = self._empty.clone()
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        return mask

    # -- advancing ----------------------------------------------------------------------------

    def advance(self, state: GrammarState, token_id: int) -> GrammarState:
        token_id = int(token_id)
        mask = self.allowed(state)
        if not (0 <= token_id < mask.shape[0]) or not bool(mask[token_id]):
            raise ValueError(f"token {token_id} ({self._name(token_id)!r}) is not allowed here")
        s = state.copy()
        if s.budget is not None:
            s.budget -= 1
        if token_id == self.eos_id and (state.finished or self.is_complete(state)):
            s.finished = True
            return s
        tok = self.id_struct.get(token_id)
        if tok is not None:
            if s.mode in (M_PLAIN, M_RAW):
                self._end_payload(s, s.text)
            _feed(s.stack, tok)
            self._normalize_after_struct(s, tok)
            return s
        piece = self.pieces[token_id]
        res = _sim(piece, s.mode, s.kind, s.dstate, self._can_end(s), True, s.sig)
        end_at, start_at, m, k, d = res
        if end_at is not None:
            self._end_payload(s, s.text + piece[:end_at])
            s.text = b""
            s.sig, s.forbid = _top_slot(s.stack)
        if start_at is not None:
            if end_at is None:
                s.text = b""
            s.forbid = _top_slot(s.stack)[1]
            s.text = piece[start_at:]
            s.sig = self._after(s.stack, k)
        elif end_at is None:
            s.text = s.text + piece
        s.mode, s.kind, s.dstate = m, k, d
        return s

    def _after(self, stack, kind) -> Sig:
        tmp = list(stack)
        _feed(tmp, None, kind, "_")
        return _top_slot(tmp)[0]

    def _end_payload(self, s: GrammarState, text: bytes) -> None:
        _feed(s.stack, None, s.kind, text.decode("utf-8", "replace"))
        s.mode, s.kind, s.dstate, s.text = M_BOUND, None, None, b""

    def _normalize_after_struct(self, s: GrammarState, tok: str) -> None:
        if is_raw_opener(tok):
            s.mode = M_RAW
            s.kind = "str" if tok == "<str>" else "const"
            s.dstate = None if tok == "<str>" else CONST_START
            s.text = b""
            s.forbid = None
            s.sig = self._after(s.stack, s.kind)
        else:
            s.mode, s.kind, s.dstate, s.text = M_BOUND, None, None, b""
            s.sig, s.forbid = _top_slot(s.stack)

    def _name(self, i: int) -> str:
        if i in self.id_struct:
            return self.id_struct[i]
        if i in self.pieces:
            return self.pieces[i].decode("utf-8", "replace")
        return f"<id {i}>"


def _final_ok(r) -> bool:
    m, k, s = r[2], r[3], r[4]
    if m == M_RAW:
        return k == "str" or _const_accepting(s)
    return _accepting(k, s)


def _sim(piece: bytes, mode, kind, dstate, can_end, cont_ok, sig):
    """Run one BPE piece through the payload lexer from an abstract position.

    Returns ``(end_at, start_at, mode, kind, dstate)``: the byte offset where the current payload
    ends (before a space / ``<sep>``), where a new payload starts, and the lexer state after the
    piece; or None when the piece cannot come here. ``sig`` is the grammar slot at the next
    payload boundary; a second boundary inside one piece is refused (its slot is not known).
    """
    m, k, s = mode, kind, dstate
    end_at = start_at = None
    cur = sig
    for i, c in enumerate(piece):
        if m == M_PLAIN:
            if c == SP:
                if i != 0 or not can_end or cur is None or cur.pkind not in PLAIN_KINDS:
                    return None
                end_at = 0
                m = M_PEND
                continue
            if c == LT or (k == "num" and not cont_ok):
                return None
            s = _step(k, s, c)
            if s is None:
                return None
        elif m == M_BOUND or m == M_PEND:
            if c == SP or c == LT or cur is None or cur.pkind not in PLAIN_KINDS:
                return None
            st = _start_kind(cur.pkind, c)
            if st is None:
                return None
            k, s = st
            m = M_PLAIN
            start_at = i
            cur = None
        elif m == M_RAW:
            if c == LT:
                if k == "const" and not _const_accepting(s):
                    return None
                if cur is None or cur.pkind not in PLAIN_KINDS:
                    return None
                end_at = i
                m, s = M_SEP, 1
                continue
            if k == "const":
                s = _const_step(s, c)
                if s is None:
                    return None
        else:  # M_SEP
            if c != SEP[s]:
                return None
            s += 1
            if s == 5:
                m, k, s = M_PEND, None, None
    if m == M_PEND and start_at is None and end_at is None and mode == M_PEND:
        pass
    return end_at, start_at, m, k, s


# ---------------------------------------------------------------------------------------------
# transformers integration.
# ---------------------------------------------------------------------------------------------

try:
    from transformers import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover
    _LogitsProcessorBase = object


class GrammarLogitsProcessor(_LogitsProcessorBase):
    """Masks the scores of every batch row to the tokens ``grammar`` allows after the row's
    generated tokens (those after ``prompt_length``, which the grammar reads as its own start).

    One state per row, advanced by the newest token each call. Once a row is complete only EOS is
    allowed; after EOS only EOS / pad. ``max_new_tokens`` (optional) gives the grammar a length
    budget so that every row closes its tree in time. ``timings_us`` collects the time of each
    row's step (advance + mask), for benchmarks.
    """

    def __init__(
        self,
        grammar: PythonAstGrammar,
        prompt_length: int | list[int],
        eos_token_id: int,
        vocab_size: int,
        max_new_tokens: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.vocab_size = vocab_size
        self.max_new_tokens = max_new_tokens
        self.states: list | None = None
        self.consumed: list[int] = []
        self.timings_us: list[float] = []
        self._pad_cache: dict[int, torch.Tensor] = {}

    def _mask(self, state, width: int, device) -> torch.Tensor:
        m = self.grammar.allowed(state)
        if m.shape[0] != width:
            if m.shape[0] > width:
                m = m[:width]
            else:
                m = torch.cat([m, torch.zeros(width - m.shape[0], dtype=torch.bool)])
        return m if device.type == "cpu" else m.to(device, non_blocking=True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import time

        batch = input_ids.shape[0]
        if self.states is None:
            budget = None if self.max_new_tokens is None else self.max_new_tokens - 1
            self.states = [self.grammar.initial_state(budget) for _ in range(batch)]
            pl = self.prompt_length
            self.consumed = list(pl) if isinstance(pl, (list, tuple)) else [int(pl)] * batch
        rows = input_ids.tolist() if input_ids.shape[1] else [[] for _ in range(batch)]
        width = scores.shape[-1]
        masks = []
        for b in range(batch):
            t0 = time.perf_counter()
            state = self.states[b]
            row = rows[b]
            while self.consumed[b] < len(row):
                tid = row[self.consumed[b]]
                self.consumed[b] += 1
                if state.finished:
                    continue  # EOS / pad after the end
                state = self.grammar.advance(state, tid)
            self.states[b] = state
            masks.append(self._mask(state, width, scores.device))
            self.timings_us.append((time.perf_counter() - t0) * 1e6)
        allowed = torch.stack(masks)
        if self.pad_token_id is not None:
            done = torch.tensor([s.finished for s in self.states], device=scores.device)
            if bool(done.any()):
                allowed[done, self.pad_token_id] = True
        return scores.masked_fill(~allowed, float("-inf"))
