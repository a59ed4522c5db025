"""Alpha-renaming of the names a JavaScript or Java unit binds.

Bound names: the unit's own name (when it is an ``identifier``: a function declaration, a Java
method or constructor; JavaScript method names are property names and stay), formal parameters,
local variables (JavaScript ``let``/``const``/``var`` incl. destructuring patterns, ``catch``
parameters, ``for ... of/in`` variables; Java local variables, enhanced-for variables, catch
parameters, try resources, lambda parameters, ``instanceof`` / record pattern variables) and the
names of nested functions. They become ``var_0, var_1, ...`` in order of first occurrence.

Renaming is by name inside the unit (not scope-exact): every ``identifier`` node whose text is a
bound name is renamed, wherever it is, except where an identifier is not a variable:

* never property names (JavaScript ``property_identifier`` etc. are other node types anyway), labels
  (``statement_identifier`` / Java labels), Java field-access field names, method-reference names,
  annotation names and keys, method names of nested declarations, and Java method-invocation names
  -- except unqualified (or ``this.``) calls of the unit's own method, which are renamed with it;
* a JavaScript shorthand property (``{a}``, ``const {a} = o``) is both a property name and a
  variable: a bound name that appears in one is *not renamed at all* (left as it is, consistently).

Placeholders that already occur in the code as words are skipped (``var_0`` in the source makes the
first placeholder ``var_1``), so the mapping is a bijection and ``undo_renaming`` restores the text
exactly. The rewrite replaces byte spans of the source; layout and comments are untouched.
``mapping`` maps each original name to its placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml.codec.treesitter_codec import parse_unit_wrapped

PREFIX = "var_"


@dataclass
class Renaming:
    code: str
    mapping: dict[str, str]  # original name -> placeholder


# -- which identifiers bind a name ------------------------------------------------------------


def _pattern_names(node, out: list, shorthand: set, src: bytes) -> None:
    """Identifiers bound by a JavaScript binding target (identifier or destructuring pattern)."""
    stack = [node]
    while stack:
        n = stack.pop()
        t = n.type
        if t == "identifier":
            out.append(n)
        elif t == "shorthand_property_identifier_pattern":
            shorthand.add(src[n.start_byte : n.end_byte])
        elif t in ("assignment_pattern", "object_assignment_pattern"):
            left = n.child_by_field_name("left")
            if left is not None:
                stack.append(left)
        elif t == "pair_pattern":
            value = n.child_by_field_name("value")
            if value is not None:
                stack.append(value)
        elif t in ("object_pattern", "array_pattern", "rest_pattern"):
            stack.extend(n.named_children)
        # member_expression / subscript targets bind nothing


def _js_bindings(root, src: bytes) -> tuple[list, set]:
    binders: list = []
    shorthand: set = set()
    stack = [root]
    while stack:
        n = stack.pop()
        t = n.type
        if t in (
            "function_declaration",
            "generator_function_declaration",
            "function_expression",
            "generator_function",
            "class_declaration",
        ):
            name = n.child_by_field_name("name")
            if name is not None and name.type == "identifier":
                binders.append(name)
        if t == "formal_parameters":
            for p in n.named_children:
                _pattern_names(p, binders, shorthand, src)
        elif t == "arrow_function":
            p = n.child_by_field_name("parameter")
            if p is not None:
                _pattern_names(p, binders, shorthand, src)
        elif t == "variable_declarator":
            name = n.child_by_field_name("name")
            if name is not None:
                _pattern_names(name, binders, shorthand, src)
        elif t == "catch_clause":
            p = n.child_by_field_name("parameter")
            if p is not None:
                _pattern_names(p, binders, shorthand, src)
        elif t == "for_in_statement" and n.child_by_field_name("kind") is not None:
            left = n.child_by_field_name("left")
            if left is not None:
                _pattern_names(left, binders, shorthand, src)
        elif t == "shorthand_property_identifier":
            shorthand.add(src[n.start_byte : n.end_byte])
        stack.extend(n.children)
    return binders, shorthand


def _java_bindings(root) -> list:
    binders: list = []
    stack = [root]
    while stack:
        n = stack.pop()
        t = n.type
        if t in (
            "formal_parameter",
            "catch_formal_parameter",
            "enhanced_for_statement",
            "resource",
            "instanceof_expression",
            "type_pattern",
            "record_pattern_component",
        ):
            name = n.child_by_field_name("name")
            if name is not None and name.type == "identifier":
                binders.append(name)
            elif t in ("type_pattern", "record_pattern_component"):
                binders.extend(c for c in n.named_children if c.type == "identifier")
        elif (
            t == "variable_declarator"
            and n.parent is not None
            and n.parent.type in ("local_variable_declaration", "spread_parameter")
        ):
            name = n.child_by_field_name("name")
            if name is not None and name.type == "identifier":
                binders.append(name)
        elif t == "lambda_expression":
            p = n.child_by_field_name("parameters")
            if p is not None and p.type == "identifier":
                binders.append(p)
        elif t == "inferred_parameters":
            binders.extend(c for c in n.named_children if c.type == "identifier")
        stack.extend(n.children)
    return binders


# -- which identifiers are not variables ----------------------------------------------------------


def _java_not_variable(node, unit, own_name: bytes | None, src: bytes) -> bool:
    parent = node.parent
    if parent is None:
        return False
    pt = parent.type
    field = None
    for i, child in enumerate(parent.children):
        if child.id == node.id:
            field = parent.field_name_for_child(i)
            break
    if pt == "field_access" and field == "field":
        return True
    if pt == "method_invocation" and field == "name":
        obj = parent.child_by_field_name("object")
        own_call = own_name is not None and src[node.start_byte : node.end_byte] == own_name
        return not (own_call and (obj is None or obj.type == "this"))
    if pt in ("method_declaration", "constructor_declaration") and field == "name":
        return parent.id != unit.id
    if pt in (
        "method_reference",
        "marker_annotation",
        "annotation",
        "element_value_pair",
        "labeled_statement",
        "break_statement",
        "continue_statement",
        "scoped_identifier",
        "enum_constant",
        "module_declaration",
        "package_declaration",
        "import_declaration",
    ):
        return True
    # a field of a local/anonymous class
    return (
        pt == "variable_declarator"
        and parent.parent is not None
        and parent.parent.type in ("field_declaration", "constant_declaration")
    )


def _placeholders(code: str):
    taken = set(re.findall(re.escape(PREFIX) + r"\d+", code))
    i = 0
    while True:
        name = f"{PREFIX}{i}"
        i += 1
        if name not in taken:
            yield name


def _identifiers(root):
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "identifier":
            yield n
        elif n.child_count:
            stack.extend(reversed(n.children))


def _rewrite(src: bytes, spans: list[tuple[int, int, bytes]], offset: int) -> str:
    out = []
    pos = offset
    for start, end, new in sorted(spans):
        out.append(src[pos:start])
        out.append(new)
        pos = end
    out.append(src[pos:])
    return b"".join(out).decode("utf-8", "surrogatepass")


def _unit_source(code: str, language: str):
    node, src, offset = parse_unit_wrapped(code, language)
    return node, src, offset, offset + len(code.encode("utf-8", "surrogatepass"))


def alpha_rename(code: str, language: str) -> Renaming:
    """Rename the unit's bound names to ``var_N`` (see the module docstring)."""
    node, src, lo, hi = _unit_source(code, language)
    if language == "javascript":
        binders, shorthand = _js_bindings(node, src)
        own_name = None
    else:
        binders, shorthand = _java_bindings(node), set()
        name = node.child_by_field_name("name")
        own_name = src[name.start_byte : name.end_byte] if name is not None else None
        if name is not None:
            binders.append(name)
    bound = {src[b.start_byte : b.end_byte] for b in binders} - shorthand
    if not bound:
        return Renaming(code=code, mapping={})
    occurrences = []
    for ident in _identifiers(node):
        text = src[ident.start_byte : ident.end_byte]
        if text not in bound:
            continue
        if language == "java" and _java_not_variable(ident, node, own_name, src):
            continue
        occurrences.append((ident.start_byte, ident.end_byte, text))
    occurrences.sort()
    names = _placeholders(code)
    mapping_b: dict[bytes, bytes] = {}
    for _, _, text in occurrences:
        if text not in mapping_b:
            mapping_b[text] = next(names).encode()
    spans = [(s, e, mapping_b[t]) for s, e, t in occurrences]
    new_code = _rewrite(src[:hi], spans, lo)
    mapping = {k.decode("utf-8", "surrogatepass"): v.decode() for k, v in mapping_b.items()}
    return Renaming(code=new_code, mapping=mapping)


def undo_renaming(code: str, mapping: dict[str, str], language: str) -> str:
    """Put the original names back: every ``identifier`` spelled as a placeholder of ``mapping``."""
    if not mapping:
        return code
    reverse = {v.encode(): k.encode("utf-8", "surrogatepass") for k, v in mapping.items()}
    node, src, lo, hi = _unit_source(code, language)
    spans = []
    for ident in _identifiers(node):
        text = src[ident.start_byte : ident.end_byte]
        if text in reverse:
            spans.append((ident.start_byte, ident.end_byte, reverse[text]))
    return _rewrite(src[:hi], spans, lo)
