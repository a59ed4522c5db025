"""The catalog of rewrite families: each is one ast-grep rule and its fix, with the plain-English instruction the
student is given and a one-line rationale (the teacher's ``<think>``).

Families were chosen to match idioms that actually occur in the corpus (the Python standard library, npm, the
JDK's ``java.base``), and to preserve behaviour where that can be promised.

The split is by family and assigned here, once, by hand (``split=``): ``ml.splits.split_of`` over the family names
would leave Python without any dev or test family and JavaScript and Java with one or two small ones, so each
language has its own explicit train / dev / test families. Every test family is either the sibling of a train family
of the same shape (``not len(x)`` vs ``len(x) == 0``: a rewrite never trained on that a small model can reach by
analogy) or one of the language's most frequent idioms, so that the demo corpus yields at least 40 test tasks per
slice; dev families (for tuning) are siblings of train families too. A family's tasks all share its split, so no
rewrite is both trained on and scored. Dev and test instructions describe the rewrite without quoting the code it
produces (the answer would be in the prompt); train instructions may show it.

ast-grep's default ("smart") matching ignores target children left over after the pattern's last one, so
``if (…) { … }`` also matches an ``if`` with an ``else`` and ``new T(…)`` an anonymous class: a fix would drop the
rest. Families whose node can carry such a tail exclude it with a ``not`` clause.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

LANGUAGES = ("python", "javascript", "java")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class RewriteFamily:
    name: str
    language: str
    instruction: str
    rule: dict
    fix: str
    rationale: str
    split: str = "train"
    constraints: dict | None = None

    def __hash__(self) -> int:  # the dict fields are unhashable; the name is unique
        return hash(self.name)

    def action(self) -> dict:
        """The action a correct step takes: ``{"rule", "fix"}`` plus ``"constraints"`` when the family has some.
        A deep copy, so a caller cannot edit the catalog."""
        action = {"rule": copy.deepcopy(self.rule), "fix": self.fix}
        if self.constraints:
            action["constraints"] = copy.deepcopy(self.constraints)
        return action


_UTF8 = {"E": {"regex": "(?i)^['\"]utf-?8['\"]$"}}
_INTEGER_LITERAL = {"N": {"kind": "integer"}}
# `??` may not be mixed with `||` / `&&` without parentheses, so neither side may be a bare binary expression.
_NO_BINARY_LEFT = {"A": {"not": {"kind": "binary_expression"}}}
_NOT_IN_BINARY = {"not": {"inside": {"kind": "binary_expression"}}}


def _python() -> list[RewriteFamily]:
    def family(name: str, instruction: str, rule: dict, fix: str, rationale: str, **kw) -> RewriteFamily:
        return RewriteFamily(name, "python", instruction, rule, fix, rationale, **kw)

    return [
        family("py_len_eq_zero", "Replace emptiness checks written as `len(x) == 0` with `not x`.",
               {"pattern": "len($A) == 0"}, "not $A",
               "An empty container is falsy, so `not x` says the same without computing a length."),
        family("py_not_in", "Rewrite negated membership tests `not a in b` as `a not in b`.",
               {"pattern": "not $A in $B"}, "$A not in $B",
               "`not in` is one operator that reads as intended; `not a in b` relies on precedence."),
        family("py_not_is", "Rewrite negated identity tests written as `not a is b` with the one negated identity "
               "operator.",
               {"pattern": "not $A is $B"}, "$A is not $B",
               "`is not` is one operator that reads as intended; `not a is b` relies on precedence.", split="dev"),
        family("py_get_none", "Drop the redundant `None` default from `.get(key, None)` calls.",
               {"pattern": "$D.get($K, None)"}, "$D.get($K)",
               "`get` already returns None for a missing key."),
        family("py_type_eq", "Compare the two types of `type(a) == type(b)` by identity instead of equality.",
               {"pattern": "type($A) == type($B)"}, "type($A) is type($B)",
               "A class is a single object, so identity is the exact test and no `__eq__` can interfere.",
               split="test"),
        family("py_join_listcomp", "Pass a generator to `str.join` instead of building a list comprehension.",
               {"pattern": "$S.join([$E for $X in $Y])"}, "$S.join($E for $X in $Y)",
               "`join` accepts any iterable, so the brackets only build a throwaway list."),
        family("py_super_old", "Call `super` without arguments where a method passes its own class and instance, as "
               "in `super(ThisClass, self)`.",
               {"pattern": "super($C, self)"}, "super()",
               "Inside a method Python 3 fills in the class and instance, and the call survives renaming the class.",
               split="test"),
        family("py_aug_add", "Turn `x = x + 1` style increments by an integer literal into `x += 1`.",
               {"pattern": "$X = $X + $N"}, "$X += $N",
               "Augmented assignment names the target once, so it cannot drift from the right-hand side.",
               constraints=_INTEGER_LITERAL),
        family("py_slice_zero", "Drop the redundant `0` start from slices like `s[0:n]`.",
               {"pattern": "$S[0:$N]", "not": {"pattern": "$S[0:$N:$M]"}}, "$S[:$N]",
               "A slice starts at 0 by default.", split="dev"),
        family("py_class_name", "Replace `obj.__class__.__name__` with `type(obj).__name__`.",
               {"pattern": "$A.__class__.__name__"}, "type($A).__name__",
               "`type()` is the public way to ask for an object's class; the dunder attribute is a detail."),
        family("py_encode_utf8", "Drop the explicit UTF-8 argument from `.encode('utf-8')` calls.",
               {"pattern": "$S.encode($E)"}, "$S.encode()",
               "UTF-8 is the default encoding of `str.encode`.", constraints=_UTF8),
        family("py_sorted_keys", "Sort a dict directly: `sorted(d.keys())` becomes `sorted(d)`.",
               {"pattern": "sorted($D.keys())"}, "sorted($D)",
               "Iterating a dict yields its keys, so `.keys()` adds nothing."),
        family("py_in_list_tuple", "Test membership against a tuple literal instead of a list literal, as in "
               "`x in [a, b]`.",
               {"pattern": "$A in [$B, $$$C]"}, "$A in ($B, $$$C)",
               "A fixed set of alternatives is a constant tuple; a list suggests it might change.", split="test"),
        # test: each mirrors a train family above
        family("py_not_len", "Simplify emptiness checks written as `not len(x)` by testing the container itself.",
               {"pattern": "not len($A)"}, "not $A",
               "An empty container is falsy, so the length call is unnecessary.", split="test"),
        family("py_aug_sub", "Write decrements by an integer literal such as `x = x - 1` as an augmented assignment.",
               {"pattern": "$X = $X - $N"}, "$X -= $N",
               "Augmented assignment names the target once, so it cannot drift from the right-hand side.",
               split="test", constraints=_INTEGER_LITERAL),
        family("py_keys_list", "Build a list of a dict's keys without the `.keys()` call of `list(d.keys())`.",
               {"pattern": "list($D.keys())"}, "list($D)",
               "Iterating a dict yields its keys, so `.keys()` adds nothing.", split="test"),
        family("py_decode_utf8", "Drop the explicit UTF-8 argument from `.decode('utf-8')` calls.",
               {"pattern": "$S.decode($E)"}, "$S.decode()",
               "UTF-8 is the default encoding of `bytes.decode`.", split="test", constraints=_UTF8),
    ]


def _javascript() -> list[RewriteFamily]:
    def family(name: str, instruction: str, rule: dict, fix: str, rationale: str, **kw) -> RewriteFamily:
        return RewriteFamily(name, "javascript", instruction, rule, fix, rationale, **kw)

    return [
        family("js_arrow_return", "Give arrow functions whose body only returns an expression a concise body: "
               "`(x) => { return f(x) }` becomes `(x) => f(x)`.",
               {"pattern": "($$$P) => { return $E }"}, "($$$P) => $E",
               "A concise arrow body returns its expression, so the block and `return` are noise.",
               # an object literal would read as a block, and a comma expression would end the arrow early
               constraints={"E": {"not": {"any": [{"kind": "object"}, {"kind": "sequence_expression"}]}}}),
        family("js_arrow_single_paren", "Drop the parentheses around a single plain arrow-function parameter: "
               "`(x) => …` becomes `x => …`.",
               {"pattern": "($P) => $B"}, "$P => $B",
               "One plain identifier parameter needs no parentheses.", constraints={"P": {"kind": "identifier"}}),
        family("js_length_eq_zero", "Write emptiness checks `a.length === 0` as `!a.length`.",
               {"pattern": "$A.length === 0"}, "!$A.length",
               "A length of 0 is the only falsy length, so negating it is the same test."),
        family("js_assign_or", "Use logical OR assignment: `a = a || b` becomes `a ||= b`.",
               {"pattern": "$A = $A || $B"}, "$A ||= $B",
               "`||=` names the target once and only assigns when it is falsy."),
        family("js_replace_g", "Use the string method whose name says it replaces every match instead of `.replace` "
               "when the first argument is a regular expression literal with the `g` flag.",
               {"pattern": "$A.replace($R, $B)"}, "$A.replaceAll($R, $B)",
               "With a global regex both replace every match, and `replaceAll` says so.", split="test",
               constraints={"R": {"kind": "regex", "regex": "/[a-z]*g[a-z]*$"}}),
        family("js_or_empty_obj", "Default to an empty object with nullish coalescing: `a || {}` becomes `a ?? {}`.",
               {"pattern": "$A || {}", **_NOT_IN_BINARY}, "$A ?? {}",
               "Only a missing value (null or undefined) should fall back to the empty object.",
               constraints=_NO_BINARY_LEFT),
        family("js_or_str", "Default to an empty string with nullish coalescing instead of `a || ''`.",
               {"pattern": "$A || ''", **_NOT_IN_BINARY}, "$A ?? ''",
               "Only a missing value (null or undefined) should fall back to the empty string.", split="dev",
               constraints=_NO_BINARY_LEFT),
        family("js_has_own_call", "Replace `Object.prototype.hasOwnProperty.call(o, k)` with `Object.hasOwn(o, k)`.",
               {"pattern": "Object.prototype.hasOwnProperty.call($A, $B)"}, "Object.hasOwn($A, $B)",
               "`Object.hasOwn` is the built-in spelling of the same check."),
        family("js_map_spread", "Map an iterable with `Array.from(it, f)` instead of spreading it first: "
               "`[...it].map(f)` becomes `Array.from(it, f)`.",
               {"pattern": "[...$A].map($F)"}, "Array.from($A, $F)",
               "`Array.from` takes a mapping function, so the intermediate array is not needed."),
        family("js_template_string", "Replace a template literal that only wraps one value, with no other text, by "
               "a `String(value)` call.",
               # a tagged template is a call: String(...) would drop the tag
               {"pattern": "`${$A}`", "not": {"inside": {"kind": "call_expression"}}}, "String($A)",
               "A template with nothing but one substitution is just a string conversion."),
        family("js_null_or_undef", "Collapse `a === null || a === undefined` into one loose equality test against "
               "null.",
               {"pattern": "$A === null || $A === undefined"}, "$A == null",
               "Loose equality with null is true exactly for null and undefined.", split="dev"),
        family("js_date_now", "Replace `new Date().getTime()` with `Date.now()`.",
               {"pattern": "new Date().getTime()"}, "Date.now()",
               "`Date.now()` returns the same timestamp without allocating a Date."),
        # test: each mirrors a train family above
        family("js_or_empty_arr", "Default to an empty array with nullish coalescing instead of `a || []`.",
               {"pattern": "$A || []", **_NOT_IN_BINARY}, "$A ?? []",
               "Only a missing value (null or undefined) should fall back to the empty array.",
               split="test", constraints=_NO_BINARY_LEFT),
        family("js_double_neg", "Replace the double negation `!!a` with an explicit call of the Boolean conversion "
               "function.",
               {"pattern": "!!$A"}, "Boolean($A)",
               "`Boolean(a)` states the conversion that `!!` performs by trick.", split="test"),
        family("js_split_join", "Replace `s.split('x').join('y')` by one call that replaces every occurrence, when "
               "the separator is a string.",
               {"pattern": "$S.split($A).join($B)"}, "$S.replaceAll($A, $B)",
               "Splitting on a string and joining is a replace-all, and `replaceAll` says so.",
               split="test", constraints={"A": {"kind": "string"}}),
        family("js_has_own", "Replace the method call `o.hasOwnProperty(k)` with the static own-property check of "
               "`Object`.",
               {"pattern": "$A.hasOwnProperty($B)"}, "Object.hasOwn($A, $B)",
               "`Object.hasOwn` also works for objects without a prototype or that shadow the method.",
               split="test"),
    ]


def _java() -> list[RewriteFamily]:
    def family(name: str, instruction: str, rule: dict, fix: str, rationale: str, **kw) -> RewriteFamily:
        return RewriteFamily(name, "java", instruction, rule, fix, rationale, **kw)

    npe_block = "if ($A == null) { throw new NullPointerException(); }"
    npe_bare = "if ($A == null) throw new NullPointerException();"
    return [
        family("java_var_new", "Declare locals initialised with a constructor of the same type using `var`: "
               "`Foo f = new Foo(x);` becomes `var f = new Foo(x);`.",
               # an anonymous class body would be lost from the fix
               {"pattern": "$T $V = new $T($$$A);", "not": {"has": {"kind": "class_body", "stopBy": "end"}}},
               "var $V = new $T($$$A);",
               "The constructor already names the type, so repeating it on the left is noise."),
        family("java_var_cast", "Declare locals initialised with a cast to their own type using `var`: "
               "`Foo f = (Foo) o;` becomes `var f = (Foo) o;`.",
               {"pattern": "$T $V = ($T) $E;"}, "var $V = ($T) $E;",
               "The cast already names the type, so repeating it on the left is noise."),
        family("java_require_non_null_block", "Replace `if (x == null) { throw new NullPointerException(); }` with "
               "`Objects.requireNonNull(x);`.",
               {"pattern": npe_block, "not": {"pattern": npe_block + " else $B"}}, "Objects.requireNonNull($A);",
               "`Objects.requireNonNull` is the standard one-line null check and throws the same exception."),
        family("java_return_parens", "Drop redundant parentheses around a returned expression, as in `return (x);`.",
               {"pattern": "return ($A);"}, "return $A;",
               "`return` is not a function call; the parentheses add nothing.", split="test"),
        family("java_aug_add", "Turn `x = x + y;` into `x += y;`.",
               {"pattern": "$X = $X + $Y;"}, "$X += $Y;",
               "Augmented assignment names the target once, so it cannot drift from the right-hand side."),
        family("java_plus_one", "Turn `x += 1;` statements into the increment operator.",
               {"pattern": "$X += 1;"}, "$X++;",
               "Incrementing by one has its own operator.", split="dev"),
        family("java_string_format", "Call the format string's own formatting method instead of "
               "`String.format(\"…\", args)` when the format is a string literal.",
               {"pattern": "String.format($F, $$$A)"}, "$F.formatted($$$A)",
               "`formatted` reads left to right from the template and does the same formatting.", split="dev",
               constraints={"F": {"kind": "string_literal"}}),
        family("java_length_eq_zero", "Replace `s.length() == 0` with `s.isEmpty()`.",
               {"pattern": "$S.length() == 0"}, "$S.isEmpty()",
               "`isEmpty()` states the intent directly.",
               # `return this.length() == 0;` is how isEmpty() itself is written: it would call itself
               constraints={"S": {"not": {"kind": "this"}}}),
        family("java_integer_valueof", "Replace the deprecated `new Integer(x)` with `Integer.valueOf(x)`.",
               {"pattern": "new Integer($A)"}, "Integer.valueOf($A)",
               "The boxing constructors are deprecated; `valueOf` can reuse cached instances."),
        family("java_toarray_zero", "Pass a zero-length array to `toArray` instead of one sized by the list, as in "
               "`list.toArray(new T[list.size()])`.",
               {"pattern": "$L.toArray(new $T[$L.size()])"}, "$L.toArray(new $T[0])",
               "`toArray` allocates the right size itself, and the empty-array form is as fast or faster.",
               split="dev"),
        family("java_string_valueof", "Replace string conversion by concatenation `\"\" + x` with "
               "`String.valueOf(x)`.",
               {"pattern": "\"\" + $A"}, "String.valueOf($A)",
               "`String.valueOf` says what is meant instead of concatenating with an empty string."),
        family("java_diamond", "Use the diamond operator when constructing a generic class: "
               "`new ArrayList<String>()` becomes `new ArrayList<>()`.",
               # an anonymous class body would be lost from the fix
               {"pattern": "new $T<$$$A>($$$R)", "not": {"has": {"kind": "class_body"}}}, "new $T<>($$$R)",
               "The compiler infers the type arguments from the context."),
        # test: each mirrors a train family above
        family("java_var_new_array", "Declare locals initialised with a new array of the same type, such as "
               "`int[] a = new int[n];`, with local variable type inference.",
               # `new T[n][m]` (or a 2-D declared type) would also match, its tail dropped by the fix
               {"pattern": "$T[] $V = new $T[$N];", "not": {"regex": "\\]\\s*\\["}}, "var $V = new $T[$N];",
               "The array creation already names the type, so repeating it on the left is noise.", split="test"),
        family("java_require_non_null", "Replace `if (x == null) throw new NullPointerException();` (no braces) "
               "with the standard library's one-line null check.",
               {"pattern": npe_bare, "not": {"pattern": npe_bare + " else $B"}}, "Objects.requireNonNull($A);",
               "`Objects.requireNonNull` is the standard one-line null check and throws the same exception.",
               split="test"),
        family("java_aug_sub", "Write `x = x - y;` with an augmented assignment operator.",
               {"pattern": "$X = $X - $Y;"}, "$X -= $Y;",
               "Augmented assignment names the target once, so it cannot drift from the right-hand side.",
               split="test"),
        family("java_double_parens", "Remove one pair of the doubled parentheses in `((x))`.",
               {"pattern": "(($A))"}, "($A)",
               "One pair of parentheses groups just as well as two.", split="test"),
    ]


FAMILIES: tuple[RewriteFamily, ...] = (*_python(), *_javascript(), *_java())
_BY_NAME = {f.name: f for f in FAMILIES}
assert len(_BY_NAME) == len(FAMILIES), "family names must be unique"


def families_for(language: str, split: str | None = None) -> list[RewriteFamily]:
    """The families of ``language`` (all splits, or only ``split``), in catalog order."""
    return [f for f in FAMILIES if f.language == language and (split is None or f.split == split)]


def get_family(name: str) -> RewriteFamily:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown rewrite family {name!r}; known: {', '.join(sorted(_BY_NAME))}") from None
