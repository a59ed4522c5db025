"""The token alphabet shared by every AST codec, and the text form a language model reads.

A serialized AST is a list of tokens. Structural tokens look like ``<...>`` (``<open>``,
``<close>``, ``<indent>``, ``<dedent>``, ``<field:body>``, ``<op:Add>``, ``<ctx:Load>``,
node types such as ``<FunctionDef>`` or ``<n:call_expression>``). Every other token is a
*payload*: identifier, number or string text, escaped so it never contains ``<``.

The text form joins the tokens into one string for BPE tokenization: structural tokens are
kept verbatim (they become added tokens of the tokenizer), payloads are written raw. Two
payloads that follow each other are separated by a single space, except after a *raw
opener* (``<str>``, ``<const>``, a tree-sitter leaf ``<n:...>``), whose payload may hold
spaces and runs to the next structural token; a ``<sep>`` token ends it when a payload follows.
"""

from __future__ import annotations

import re
from urllib.parse import quote

STRUCT_RE = re.compile(r"<[^\s<>]+>")
SEP = "<sep>"
_SPLIT_RE = re.compile(r"(<[^\s<>]+>)")
_UNESCAPE_RE = re.compile(r"\\(s[0-9a-f]{4}|.)", re.DOTALL)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def escape_payload(text: str) -> str:
    """Escape a literal so it can never be mistaken for a structural token.

    Lone surrogates (Python strings such as ``"\\udc80"``) become ``\\sdc80``: UTF-8 files, Parquet
    and tokenizers cannot hold them.
    """
    text = text.replace("\\", "\\\\").replace("<", "\\l")
    if not text.isascii() and _SURROGATE_RE.search(text):
        text = _SURROGATE_RE.sub(lambda m: f"\\s{ord(m.group()):04x}", text)
    return text


def _unescape_one(m: re.Match) -> str:
    code = m.group(1)
    if code == "l":
        return "<"
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return code


def unescape_payload(token: str) -> str:
    if "\\" not in token:
        return token
    return _UNESCAPE_RE.sub(_unescape_one, token)


def is_structural(token: str) -> bool:
    return token.startswith("<")


def struct_name(text: str) -> str:
    """Make arbitrary text (a tree-sitter anonymous token such as ``<<=``) safe inside ``<...>``."""
    return quote(text, safe="!\"#$&'()*+,-./:;=?@[\\]^_`{|}~")


def is_raw_opener(token: str) -> bool:
    return token in ("<str>", "<const>") or token.startswith("<n:")


def tokens_to_text(tokens: list[str]) -> str:
    parts: list[str] = []
    expect_raw = False  # the last token was a raw opener whose payload comes next
    after_raw = False  # the last token was a raw payload: a following payload needs <sep>
    after_plain = False  # the last token was a plain payload: a following payload needs a space
    for tok in tokens:
        if is_structural(tok):
            parts.append(tok)
            expect_raw, after_raw, after_plain = is_raw_opener(tok), False, False
            continue
        if after_raw:
            parts.append(SEP)
        elif after_plain:
            parts.append(" ")
        parts.append(tok)
        after_raw, after_plain, expect_raw = expect_raw, not expect_raw, False
    return "".join(parts)


def text_to_tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pieces = _SPLIT_RE.split(text)
    raw_next = False
    for i, piece in enumerate(pieces):
        if i % 2 == 1:  # a structural token
            if piece == SEP:
                continue
            tokens.append(piece)
            raw_next = is_raw_opener(piece)
            continue
        if raw_next:
            # A raw opener always owns exactly one payload, possibly empty (``<str><sep>``... or
            # ``<str>``<close>): tree-sitter leaves are never empty, so for them skip ''.
            if piece or tokens[-1] in ("<str>", "<const>"):
                tokens.append(piece)
            raw_next = False
            continue
        if piece:
            tokens.extend(piece.split(" "))
    return tokens
