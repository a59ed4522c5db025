"""Function-level units from JavaScript and Java files, with tree-sitter.

JavaScript units: function declarations (incl. generators), methods (``Class.method``; object
literal methods get the object's name when it has one), and function expressions / arrow functions
assigned to a variable, a property (``obj.key``) or a member (``module.exports.f``), or a class
field. Java units: methods and constructors with body (``Outer.Inner.method``; enum and record
members too; interface ``default``/``static`` methods with a body).

Units are never nested: the outermost function-like node is the unit, and what it contains stays
inside it. Classes are looked into (their methods are units) unless they sit inside a unit.
Anonymous callbacks (``describe(() => {...})``, IIFEs) are not units but are looked into.
"""

from __future__ import annotations

import re

from ml.codec.base import DecodeError
from ml.codec.treesitter_codec import COMMENTS, get_parser, parse_unit
from ml.extract import Extraction
from ml.units import CodeUnit, normalized_hash

_JS_DECL_FUNCS = frozenset({"function_declaration", "generator_function_declaration"})
_JS_EXPR_FUNCS = frozenset({"function_expression", "generator_function", "arrow_function", "function"})
_JS_CLASSES = frozenset({"class_declaration", "class"})
_JAVA_TYPES = frozenset(
    {
        "class_declaration",
        "interface_declaration",
        "enum_declaration",
        "record_declaration",
        "annotation_type_declaration",
    }
)
_JAVA_FUNCS = frozenset({"method_declaration", "constructor_declaration"})

# Nodes between a unit and the comment that documents it (``/** doc */ export const f = () => 1``).
_DOC_WRAPPERS = frozenset(
    {
        "variable_declarator",
        "lexical_declaration",
        "variable_declaration",
        "export_statement",
        "expression_statement",
        "assignment_expression",
        "pair",
        "field_definition",
        "parenthesized_expression",
    }
)


def clean_comment(text: str) -> str:
    """A comment's text without ``/**``, ``/*``, ``*/``, leading ``*`` and ``//`` markers."""
    text = text.strip()
    if text.startswith("/*"):
        text = text[2:]
        while text.startswith("*"):
            text = text[1:]
        text = text.removesuffix("*/")
        lines = [
            re.sub(r"^\s*\*+ ?", "", line) if line.lstrip().startswith("*") else line
            for line in text.splitlines()
        ]
    else:
        lines = [re.sub(r"^\s*//+ ?", "", line) for line in text.splitlines()]
    # dedent the remaining lines, drop leading/trailing blank ones
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents) if indents else 0
    return "\n".join(line[cut:].rstrip() for line in lines).strip()


def _text(node, src: bytes) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _alone_on_line(node, src: bytes) -> bool:
    """Nothing but blanks before ``node`` on its line (not a trailing comment of some code)."""
    line_start = src.rfind(b"\n", 0, node.start_byte) + 1
    return not src[line_start : node.start_byte].strip()


def _docstring(node, src: bytes, language: str) -> str:
    """The comment right before ``node`` (climbing through declarations that hold it)."""
    comments = COMMENTS[language]
    anchor = node
    while anchor.parent is not None and anchor.parent.type in _DOC_WRAPPERS:
        parent = anchor.parent
        # only climb when the unit is where the parent starts reading (the name/key comes first)
        if (
            parent.type in ("pair", "assignment_expression", "variable_declarator", "field_definition")
            and parent.named_child_count
            and parent.named_children[-1].id != anchor.id
        ):
            break
        anchor = parent
    prev = anchor.prev_sibling
    if prev is None or prev.type not in comments:
        return ""
    if anchor.start_point[0] - prev.end_point[0] > 1:  # a blank line between: not its doc
        return ""
    if not _alone_on_line(prev, src):
        return ""
    text = _text(prev, src)
    if text.startswith("//") and language == "javascript" or prev.type == "line_comment":
        # a run of line comments on consecutive lines
        run = [prev]
        while True:
            p = run[-1].prev_sibling
            if p is None or p.type != prev.type or not _text(p, src).startswith("//"):
                break
            if run[-1].start_point[0] - p.end_point[0] != 1:
                break
            if not _alone_on_line(p, src):  # a trailing comment of some code
                break
            run.append(p)
        text = "\n".join(_text(p, src) for p in reversed(run))
    return clean_comment(text)


class _Extractor:
    def __init__(self, text: str, path: str, source: str, language: str, max_chars: int):
        self.src = text.encode("utf-8", "surrogatepass")
        self.path = path
        self.source = source
        self.language = language
        self.max_chars = max_chars
        self.result = Extraction()

    def emit(self, node, name: str) -> None:
        res = self.result
        if node.has_error:
            res.skip("syntax_error")
            return
        code = _text(node, self.src)
        if len(code) > self.max_chars:
            res.skip("oversized")
            return
        if self.language == "java" and node.child_by_field_name("body") is None:
            res.skip("no_body")
            return
        try:
            parse_unit(code, self.language)
        except (DecodeError, ValueError):
            res.skip("unparseable")
            return
        res.units.append(
            CodeUnit(
                id=normalized_hash(code),
                language=self.language,
                source=self.source,
                path=self.path,
                name=name or "<anonymous>",
                code=code,
                docstring=_docstring(node, self.src, self.language),
                start_line=node.start_point[0] + 1,
                end_line=node.end_point[0] + 1,
            )
        )

    # -- JavaScript ----------------------------------------------------------------------------

    def js_name(self, node) -> str:
        if node is None:
            return ""
        if node.type in (
            "identifier",
            "property_identifier",
            "private_property_identifier",
            "shorthand_property_identifier",
            "number",
        ):
            return _text(node, self.src)
        if node.type == "string":
            return _text(node, self.src)[1:-1]
        if node.type == "member_expression":
            return _text(node, self.src)
        return ""

    def js_walk(self, root) -> None:
        # explicit stack of (node, class/object prefix); children pushed in reverse for order
        stack = [(root, "")]
        while stack:
            node, prefix = stack.pop()
            t = node.type
            q = prefix + "." if prefix else ""
            if t in _JS_DECL_FUNCS:
                self.emit(node, q + self.js_name(node.child_by_field_name("name")))
                continue
            if t == "method_definition":
                self.emit(node, q + self.js_name(node.child_by_field_name("name")))
                continue
            if t in _JS_CLASSES:
                name = self.js_name(node.child_by_field_name("name")) or self.js_assigned_name(node)
                body = node.child_by_field_name("body")
                children = [c for c in node.children if body is None or c.id != body.id]
                if body is not None:
                    cls = name if "." in name else q + name
                    stack.append((body, cls if name else (prefix or "<anonymous>")))
                stack.extend((c, prefix) for c in reversed(children))
                continue
            if t in _JS_EXPR_FUNCS:
                name = self.js_assigned_name(node)
                if name is not None:
                    # a member target (``module.exports.f``, ``A.prototype.m``) is already qualified
                    self.emit(node, name if "." in name else q + name)
                    continue
                # an anonymous callback: look inside for units
                stack.extend((c, prefix) for c in reversed(node.children))
                continue
            if t == "object":
                name = self.js_assigned_name(node)
                sub = (q + name) if name else prefix
                stack.extend((c, sub) for c in reversed(node.children))
                continue
            stack.extend((c, prefix) for c in reversed(node.children))

    def js_assigned_name(self, node) -> str | None:
        """The name a function/class/object expression is assigned to, or None."""
        parent = node.parent
        while parent is not None and parent.type == "parenthesized_expression":
            node, parent = parent, parent.parent
        if parent is None:
            return None
        pt = parent.type
        if pt == "variable_declarator":
            value = parent.child_by_field_name("value")
            if value is not None and value.id == node.id:
                name = parent.child_by_field_name("name")
                if name is not None and name.type == "identifier":
                    return _text(name, self.src)
            return None
        if pt == "pair":
            value = parent.child_by_field_name("value")
            if value is not None and value.id == node.id:
                return self.js_name(parent.child_by_field_name("key")) or None
            return None
        if pt == "assignment_expression":
            right = parent.child_by_field_name("right")
            if right is not None and right.id == node.id:
                left = parent.child_by_field_name("left")
                return self.js_name(left) or None
            return None
        if pt == "export_statement":  # export default function () {...}
            value = parent.child_by_field_name("value")
            return "default" if value is not None and value.id == node.id else None
        if pt == "field_definition":
            value = parent.child_by_field_name("value")
            if value is not None and value.id == node.id:
                return self.js_name(parent.child_by_field_name("property")) or None
            return None
        return None

    # -- Java ----------------------------------------------------------------------------------

    def java_walk(self, root) -> None:
        stack = [(root, "")]
        while stack:
            node, prefix = stack.pop()
            t = node.type
            if t in _JAVA_FUNCS:
                name_node = node.child_by_field_name("name")
                name = _text(name_node, self.src) if name_node is not None else ""
                self.emit(node, f"{prefix}.{name}" if prefix else name)
                continue
            if t in _JAVA_TYPES:
                name_node = node.child_by_field_name("name")
                name = _text(name_node, self.src) if name_node is not None else "<anonymous>"
                sub = f"{prefix}.{name}" if prefix else name
                stack.extend((c, sub) for c in reversed(node.children))
                continue
            if t in (
                "block",
                "field_declaration",
                "static_initializer",
                "constant_declaration",
                "compact_constructor_declaration",
                "enum_constant",
                "module_declaration",
            ):
                continue  # code outside methods (initializers, anonymous classes in fields): not units
            stack.extend((c, prefix) for c in reversed(node.children))


def extract_units(text: str, path: str, source: str, language: str, max_chars: int = 20000) -> Extraction:
    """Function-level units of one JavaScript or Java file; never raises on bad input."""
    if language not in ("javascript", "java"):
        raise ValueError(f"unsupported language {language!r}")
    ex = _Extractor(text if isinstance(text, str) else "", path, source, language, max_chars)
    try:
        if not isinstance(text, str) or "\x00" in text:
            ex.result.skip("binary")
            return ex.result
        tree = get_parser(language).parse(ex.src)
        if language == "javascript":
            ex.js_walk(tree.root_node)
        else:
            ex.java_walk(tree.root_node)
    except RecursionError:
        ex.result.skip("too_deep")
    except Exception:  # noqa: BLE001 - a bad file must never stop a corpus build
        ex.result.skip("extract_error")
    return ex.result
