"""The programmatic teacher: deterministic, built on :mod:`ml.dsl.domains` and :mod:`ml.dsl.request_templates`.

Requests are rendered from their AST, so positives are correct by construction; the verdict is
:func:`ml.dsl.semantics.equivalent` against the reference (the same records selected; the canonical form of
:func:`ml.dsl.request_templates.same_meaning` when no spec is given).
"""

from __future__ import annotations

import copy
import math

from ml.dsl.domains import DomainSpec, build_domain, schema_errors
from ml.dsl.request_templates import Query, generate_queries, same_meaning
from ml.dsl.teachers.base import Teacher, TeacherQuery, Verdict

# Example requests shown with a domain spec are drawn from a seed stream disjoint from the query seeds.
EXAMPLE_SEED_OFFSET = 1_000_003
# A programmatic label lookup for a request it did not hand out itself regenerates these query seeds.
LOOKUP_SEEDS = tuple(range(8))
LOOKUP_N = 256


def unique_queries(spec: DomainSpec, k: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
                   ) -> list[Query]:
    """The first ``k`` seeded queries of ``spec`` whose English and French texts are new (not seen before in the
    stream, not in ``exclude``). ``generate_queries`` is prefix-stable, so this is deterministic. May return fewer
    than ``k`` when the domain cannot produce that many distinct requests."""
    if k <= 0:
        return []
    m = max(2 * k, 8)
    while True:
        seen = set(exclude)
        out: list[Query] = []
        pool = generate_queries(spec, m, seed)
        for q in pool:
            if q.text_en in seen or q.text_fr in seen:
                continue
            seen.update((q.text_en, q.text_fr))
            out.append(q)
            if len(out) == k:
                return out
        if m >= 20 * k + 64:
            return out
        m *= 2


def lookup_request(spec: DomainSpec, text: str, seeds=LOOKUP_SEEDS, n: int = LOOKUP_N) -> dict | None:
    """The AST of a request the programmatic teacher renders for ``spec`` (query seeds ``seeds``, first ``n``
    queries each), or None."""
    for s in seeds:
        for q in generate_queries(spec, n, s):
            if text in (q.text_en, q.text_fr):
                return copy.deepcopy(q.ast)
    return None



class ProgrammaticTeacher(Teacher):
    """The deterministic teacher: specs from :func:`build_domain`, requests rendered from sampled ASTs."""

    name = "programmatic"

    def domain_spec(self, domain, *, seed, examples, min_operators=4, max_operators=7):
        self._count(calls=1)
        try:
            spec = build_domain(domain, seed, min_operators=min_operators, max_operators=max_operators)
        except KeyError as exc:
            raise ValueError(f"programmatic teacher: {exc.args[0]}") from exc
        return spec, [q.text_en for q in unique_queries(spec, examples, EXAMPLE_SEED_OFFSET + seed)]

    def queries(self, spec, schema, n, *, seed):
        self._count(calls=1)
        pairs = unique_queries(spec, math.ceil(n / 2), seed)
        out = []
        for q in pairs:
            out.append(TeacherQuery(spec.name, "en", q.text_en, copy.deepcopy(q.ast)))
            out.append(TeacherQuery(spec.name, "fr", q.text_fr, copy.deepcopy(q.ast)))
        out = out[:n]
        if len(out) < n:
            self._count(dropped=n - len(out))
        return out

    def label(self, spec, schema, query):
        self._count(calls=1)
        ast = copy.deepcopy(query.ast) if query.ast is not None else lookup_request(spec, query.text)
        if ast is None:
            self._count(dropped=1)
            return None
        if schema_errors(ast, schema):
            self._count(schema_invalid=1, dropped=1)
            return None
        return ast

    def judge(self, spec, schema, query, candidate, reference):
        self._count(calls=1)
        ref = reference if reference is not None else query.ast
        if ref is None:
            ref = lookup_request(spec, query.text)
        if ref is None:
            self._count(dropped=1)
            return None
        # The verdict is on meaning only: schema validity is scored on its own (schema_valid), and a judge that
        # also rejected schema-invalid answers would make teacher_accept_rate equal semantic_pass_rate.
        if not isinstance(candidate, dict):
            return Verdict(False, "candidate is not a JSON object")
        if spec is None:  # a caller without the domain's spec (the chat server): canonical form only
            same_form = same_meaning(candidate, ref)
            return Verdict(same_form, "same canonical form" if same_form else "canonical form differs")
        from ml.dsl.semantics import equivalent

        same = equivalent(candidate, ref, spec)
        return Verdict(same.equivalent, same.reason)
