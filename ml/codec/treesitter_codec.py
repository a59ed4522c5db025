"""A reversible token codec for tree-sitter languages (JavaScript, Java).

Token scheme (see ``ml.codec.tokens``):

* a named node ``<n:TYPE>``: a named *leaf* (no children) is followed by exactly one payload, its
  text (``escape_payload``); any other named node is followed by its children, then ``<close>``;
* an anonymous node (keyword, punctuation) ``<t:TEXT>``, TEXT passed through ``struct_name``;
* source text that no visible node covers and that is not whitespace (the text of *hidden*
  tokens, e.g. a Java text block's ``\\<newline>`` line continuation or ``\\0`` escape) is kept
  as ``<t:TEXT>`` too, at its place among the leaves; such tokens are not in ``vocabulary()``;
* verbose mode adds ``<field:NAME>`` before a child that has a field name and ``<open>`` before
  every non-leaf named node; compact mode has neither;
* JavaScript only: ``<nl>`` where the source had a newline between two leaves (automatic
  semicolon insertion makes newlines meaningful). It is written before the outermost node that
  starts on the new line (before its ``<field:...>`` / ``<open>`` tokens).

Decoding rebuilds source text from the leaves: ``"\\n"`` after ``<nl>`` or a line comment, ``""``
between two leaves whose lowest common ancestor is a string-like node (string, template string,
regex, JSX element, Java string literal...), ``" "`` otherwise.

A unit's code may not parse alone (a JavaScript class method, a Java method): ``parse_unit``
wraps it (``class __U { ... }``) and returns the unit's own node.
"""

from __future__ import annotations

import re
from functools import cache
from urllib.parse import unquote

import tree_sitter

from ml.codec import treesitter_compact as compact
from ml.codec.base import MODES, DecodeError
from ml.codec.tokens import escape_payload, is_structural, struct_name, unescape_payload

LANGUAGES = ("javascript", "java")

OPEN = "<open>"
CLOSE = "<close>"
NL = "<nl>"

# Nodes whose direct children are contiguous in the source: no separator between them.
CONTIGUOUS = {
    "javascript": frozenset(
        {"string", "template_string", "regex", "jsx_element", "jsx_text", "jsx_namespace_name"}
    ),
    "java": frozenset({"string_literal", "character_literal", "template_expression"}),
}
# Named leaves that must be followed by a newline.
LINE_COMMENTS = {"javascript": frozenset({"comment", "html_comment"}), "java": frozenset({"line_comment"})}
COMMENTS = {
    "javascript": frozenset({"comment", "html_comment"}),
    "java": frozenset({"line_comment", "block_comment"}),
}

# Node types that are a unit's own node (what ``parse_unit`` may return).
JS_FUNCTIONS = frozenset(
    {
        "function_declaration",
        "generator_function_declaration",
        "function_expression",
        "generator_function",
        "arrow_function",
        "method_definition",
    }
)
JAVA_FUNCTIONS = frozenset(
    {"method_declaration", "constructor_declaration", "compact_constructor_declaration"}
)
UNIT_TYPES = {"javascript": JS_FUNCTIONS, "java": JAVA_FUNCTIONS}
WRAP_CLASS = "__U"


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"unsupported tree-sitter language {language!r}; expected one of {LANGUAGES}")
    return language


@cache
def get_language(language: str) -> tree_sitter.Language:
    _check_language(language)
    if language == "javascript":
        import tree_sitter_javascript as mod
    else:
        import tree_sitter_java as mod
    return tree_sitter.Language(mod.language())


@cache
def get_parser(language: str) -> tree_sitter.Parser:
    """A cached parser for ``"javascript"`` or ``"java"`` (not thread-safe: one per process)."""
    return tree_sitter.Parser(get_language(language))


def _unit_in_program(root: tree_sitter.Node, language: str) -> tree_sitter.Node | None:
    """The function node when ``root`` (a program) holds exactly one function and nothing else."""
    comments = COMMENTS[language]
    items = [c for c in root.named_children if c.type not in comments]
    if len(items) != 1:
        return None
    node = items[0]
    if node.type in ("function_declaration", "generator_function_declaration"):
        return node
    if node.type == "expression_statement" and node.named_child_count == 1:
        expr = node.named_children[0]
        if expr.type in ("arrow_function", "function_expression", "generator_function"):
            return expr
        if expr.type == "parenthesized_expression" and expr.named_child_count == 1:
            inner = expr.named_children[0]
            if inner.type in ("function_expression", "generator_function", "arrow_function"):
                return inner
    return None


def _unit_in_class(root: tree_sitter.Node, language: str) -> tree_sitter.Node | None:
    comments = COMMENTS[language]
    items = [c for c in root.named_children if c.type not in comments]
    if len(items) != 1 or items[0].type != "class_declaration":
        return None
    body = items[0].child_by_field_name("body")
    if body is None:
        return None
    members = [c for c in body.named_children if c.type not in comments]
    if len(members) != 1 or members[0].type not in UNIT_TYPES[language]:
        return None
    return members[0]


_JS_STANDALONE = (
    ("", "", _unit_in_program),
    ("(", "\n)", _unit_in_program),
    (f"class {WRAP_CLASS} {{\n", "\n}", _unit_in_class),
)
_JS_METHOD_FIRST = (_JS_STANDALONE[2], _JS_STANDALONE[0], _JS_STANDALONE[1])
_JAVA_WRAPPINGS = ((f"class {WRAP_CLASS} {{\n", "\n}", _unit_in_class),)
# Only code starting like this can parse alone (or in parentheses) as one function; anything else
# is tried as a class member first, which saves two failing parses per method and changes no result.
_JS_FUNCTION_START = re.compile(r"\s*(?:async\b\s*)?(?:function\b|\(|[\w$]+\s*=>)")


def _wrappings(language: str, code: str) -> tuple:
    if language == "javascript":
        return _JS_STANDALONE if _JS_FUNCTION_START.match(code) else _JS_METHOD_FIRST
    return _JAVA_WRAPPINGS


def parse_unit_wrapped(code: str, language: str) -> tuple[tree_sitter.Node, bytes, int]:
    """``parse_unit`` plus the bytes the node's offsets refer to (the wrapped source) and the
    byte offset of ``code`` inside them."""
    _check_language(language)
    if not isinstance(code, str):
        raise DecodeError("unit code must be a string")
    parser = get_parser(language)
    raw = code.encode("utf-8", "surrogatepass")
    for prefix, suffix, finder in _wrappings(language, code):
        pre = prefix.encode()
        src = pre + raw + suffix.encode()
        tree = parser.parse(src)
        if tree.root_node.has_error:
            continue
        node = finder(tree.root_node, language)
        if node is not None:
            return node, src, len(pre)
    raise DecodeError(f"{language} unit does not parse cleanly as one function")


def parse_unit_with_source(code: str, language: str) -> tuple[tree_sitter.Node, bytes]:
    """``parse_unit`` plus the bytes the node's offsets refer to (the wrapped source)."""
    node, src, _ = parse_unit_wrapped(code, language)
    return node, src


def parse_unit(code: str, language: str) -> tree_sitter.Node:
    """The unit's own node (function / method / arrow), wrapping the code when it needs it.

    Tries the code alone, then (JavaScript) in parentheses, then inside ``class __U { ... }``;
    the first wrapping under which it parses without errors to exactly one function wins.
    Raises ``DecodeError`` (a ``ValueError``) when none does.
    """
    return parse_unit_with_source(code, language)[0]


@cache
def _tables(language: str) -> tuple[dict[int, str], dict[int, str]]:
    lang = get_language(language)
    named = {}
    for i in range(lang.node_kind_count):
        if lang.node_kind_is_named(i):
            named[i] = f"<n:{lang.node_kind_for_id(i)}>"
    fields = {i: f"<field:{lang.field_name_for_id(i)}>" for i in range(1, lang.field_count + 1)}
    return named, fields


def _node_signature(node: tree_sitter.Node, src: bytes) -> list:
    """Every node in pre-order as (depth, type, field, leaf text for named leaves)."""
    out = []
    cursor = node.walk()
    depth = 0
    while True:
        n = cursor.node
        leaf = n.child_count == 0
        text = src[n.start_byte : n.end_byte] if (leaf and n.is_named) else None
        out.append((depth, n.type, n.is_named, cursor.field_name if depth else None, text))
        if cursor.goto_first_child():
            depth += 1
            continue
        while True:
            if depth == 0:
                return out
            if cursor.goto_next_sibling():
                break
            cursor.goto_parent()
            depth -= 1


class TreeSitterCodec:
    """Reversible token codec for one tree-sitter language (``"javascript"`` or ``"java"``)."""

    def __init__(self, language: str):
        self.language = _check_language(language)
        self._named, self._fields = _tables(language)
        self._anon_cache: dict[bytes, str] = {}
        self._newlines = language == "javascript"
        self._contiguous = CONTIGUOUS[language]
        self._line_comments = LINE_COMMENTS[language]
        self._tables = compact.tables(language)
        self.format_version = compact.format_version(language)
        self._last: tuple | None = None  # (code, mode, node, src, tokens) of the last ``encode``

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, code: str, mode: str = "compact") -> list[str]:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        node, src = parse_unit_with_source(code, self.language)
        tokens = self.encode_node(node, src, mode)
        self._last = (code, mode, node, src, tokens)
        return list(tokens)

    def encode_node(self, node: tree_sitter.Node, src: bytes, mode: str = "compact") -> list[str]:
        """Tokens of an already-parsed node (``src`` = the bytes its offsets refer to)."""
        if mode == "compact":
            return compact.encode(node, src, self._tables, self._newlines, self._anon_cache)
        if mode != "verbose":
            raise ValueError(f"unknown mode {mode!r}")
        verbose = True
        named_tok = self._named
        field_tok = self._fields
        anon_cache = self._anon_cache
        newlines = self._newlines
        toks: list[str] = []
        append = toks.append
        cursor = node.walk()
        depth = 0
        prev_end = -1  # end byte of the last leaf written (-1: none yet)
        while True:
            n = cursor.node
            start = n.start_byte
            if prev_end >= 0 and start > prev_end:
                gap = src[prev_end:start]
                if gap.strip():  # not only whitespace: the text of hidden tokens
                    append(self._hidden_token(gap))
                elif newlines and b"\n" in gap:
                    append(NL)
                prev_end = start  # the gap is accounted for
            if verbose and depth:
                fid = cursor.field_id
                if fid:
                    append(field_tok[fid])
            if n.child_count:
                if n.is_named:
                    if verbose:
                        append(OPEN)
                    append(named_tok[n.kind_id])
                else:  # an anonymous node with children: never seen in these grammars
                    raise DecodeError(f"anonymous node {n.type!r} with children")
                cursor.goto_first_child()
                depth += 1
                continue
            end = n.end_byte
            text = src[start:end]
            if n.is_named:
                append(named_tok[n.kind_id])
                append(escape_payload(text.decode("utf-8", "surrogatepass")))
            else:
                tok = anon_cache.get(text)
                if tok is None:
                    tok = "<t:" + struct_name(text.decode("utf-8", "surrogatepass")) + ">"
                    anon_cache[text] = tok
                append(tok)
            prev_end = max(prev_end, end)
            while depth == 0 or not cursor.goto_next_sibling():
                if depth == 0:
                    return toks
                cursor.goto_parent()
                depth -= 1
                append(CLOSE)

    def _hidden_token(self, text: bytes) -> str:
        """``<t:TEXT>`` for source text that no visible node covers (hidden tokens)."""
        tok = self._anon_cache.get(text)
        if tok is None:
            tok = "<t:" + struct_name(text.decode("utf-8", "surrogatepass")) + ">"
            self._anon_cache[text] = tok
        return tok

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, tokens: list[str], mode: str = "compact") -> str:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "compact":
            return compact.decode(tokens, self._tables, self._newlines, self._contiguous, self._line_comments)
        verbose = True
        contiguous = self._contiguous
        line_comments = self._line_comments
        parts: list[str] = []
        stack: list[str] = []  # open non-leaf named node types
        low = 0  # smallest stack height since the last leaf
        pending_nl = False
        after_line_comment = False
        pending_open = False
        pending_field = False
        have_leaf = False
        done = False
        i = 0
        ntok = len(tokens)
        while i < ntok:
            tok = tokens[i]
            i += 1
            if not isinstance(tok, str):
                raise DecodeError(f"token {tok!r} is not a string")
            if done:
                raise DecodeError(f"token {tok!r} after the end of the tree")
            if not is_structural(tok):
                raise DecodeError(f"payload {tok!r} where a structural token was expected")
            if tok == NL:
                if not self._newlines:
                    raise DecodeError("<nl> in a language without newline tokens")
                pending_nl = True
                continue
            if tok == OPEN:
                if not verbose or pending_open:
                    raise DecodeError("unexpected <open>")
                pending_open = True
                continue
            if tok.startswith("<field:"):
                if not verbose or pending_field or pending_open or not stack:
                    raise DecodeError(f"unexpected {tok}")
                pending_field = True
                continue
            if tok == CLOSE:
                if pending_open or pending_field or not stack:
                    raise DecodeError("unexpected <close>")
                stack.pop()
                low = min(low, len(stack))
                if not stack:
                    done = True
                continue
            if tok.startswith("<n:") and tok.endswith(">"):
                ntype = tok[3:-1]
                if i < ntok and not is_structural(tokens[i]):  # a named leaf and its payload
                    if pending_open:
                        raise DecodeError(f"<open> before leaf {tok}")
                    text = unescape_payload(tokens[i])
                    i += 1
                    is_line_comment = ntype in line_comments and (ntype != "comment" or text.startswith("//"))
                else:  # a non-leaf named node
                    if verbose and not pending_open:
                        raise DecodeError(f"missing <open> before {tok}")
                    pending_open = pending_field = False
                    stack.append(ntype)
                    continue
            elif tok.startswith("<t:") and tok.endswith(">"):
                if pending_open:
                    raise DecodeError(f"<open> before {tok}")
                text = unquote(tok[3:-1])
                is_line_comment = False
            else:
                raise DecodeError(f"unknown token {tok!r}")
            # a leaf: pick the separator from the previous leaf
            pending_field = False
            if not stack:
                done = True  # a lone leaf is the whole tree
            if have_leaf:
                if pending_nl or after_line_comment:
                    parts.append("\n")
                elif not (low and stack[low - 1] in contiguous):
                    parts.append(" ")
            parts.append(text)
            have_leaf = True
            pending_nl = False
            after_line_comment = is_line_comment
            low = len(stack)
        if stack or pending_open or pending_field:
            raise DecodeError("token sequence ends inside an unclosed node")
        if not have_leaf:
            raise DecodeError("empty token sequence")
        if after_line_comment:
            parts.append("\n")
        return "".join(parts)

    # -- verification ---------------------------------------------------------------------------

    def verify(self, code: str, tokens: list[str], mode: str = "compact", strict: bool = False) -> bool:
        """True when ``tokens`` are the serialization of the tree of ``code`` and decode to its text.

        What it proves (no re-parse): the tokens equal this codec's encoding of ``code``'s tree (every node in
        order with its type and text; verbose adds field names), and ``decode(tokens)`` gives the unit's source
        back character for character outside whitespace. ``strict`` also re-parses the decoded text (same
        wrapping) and compares every node's type, depth, field name and leaf text: that proves the decoder's
        choice of whitespace keeps the tree; the corpus sweep tests check it over the default corpora.
        """
        last = self._last
        try:
            if last is not None and last[0] == code and last[1] == mode:  # ``encode`` just parsed this code
                node, src, expected = last[2], last[3], last[4]
            else:
                node, src = parse_unit_with_source(code, self.language)
                expected = None
        except Exception:  # noqa: BLE001 - verify never raises
            return False
        return self.verify_node(node, src, tokens, mode, strict=strict, expected=expected)

    def verify_node(
        self, node: tree_sitter.Node, src: bytes, tokens: list[str], mode: str = "compact", strict: bool = False,
        expected: list[str] | None = None,
    ) -> bool:
        """``verify`` against a unit that is already parsed (``parse_unit_with_source``); ``expected``: its
        tokens when the caller has just encoded it."""
        try:
            if expected is None:
                expected = self.encode_node(node, src, mode)
            if tokens != expected:
                return False
            decoded = self.decode(tokens, mode)
            if b"".join(decoded.encode("utf-8", "surrogatepass").split()) != b"".join(
                src[node.start_byte : node.end_byte].split()
            ):
                return False
            if strict:
                node2, src2 = parse_unit_with_source(decoded, self.language)
                return _node_signature(node, src) == _node_signature(node2, src2)
            return True
        except Exception:  # noqa: BLE001 - verify never raises
            return False

    # -- vocabulary -----------------------------------------------------------------------------

    def vocabulary(self) -> list[str]:
        return vocabulary(self.language)


@cache
def _vocabulary(language: str) -> tuple[str, ...]:
    lang = get_language(language)
    fixed = [OPEN, CLOSE] + ([NL] if language == "javascript" else [])
    out: dict[str, None] = dict.fromkeys(fixed)
    for i in range(lang.node_kind_count):
        if not lang.node_kind_is_visible(i):
            continue
        kind = lang.node_kind_for_id(i)
        if not kind:
            continue
        if lang.node_kind_is_named(i):
            out.setdefault(f"<n:{kind}>")
        else:
            out.setdefault(f"<t:{struct_name(kind)}>")
    for i in range(1, lang.field_count + 1):
        out.setdefault(f"<field:{lang.field_name_for_id(i)}>")
    # compact mode: non-leaf openers and its two markers
    out.setdefault(compact.EMPTY)
    out.setdefault(compact.VAR)
    for i in range(lang.node_kind_count):
        kind = lang.node_kind_for_id(i)
        if kind and lang.node_kind_is_visible(i) and lang.node_kind_is_named(i):
            out.setdefault(f"<N:{kind}>")
    return tuple(out)


def vocabulary(language: str) -> list[str]:
    """Every structural token of ``language``: fixed tokens, node kinds (grammar id order), fields."""
    return list(_vocabulary(_check_language(language)))
