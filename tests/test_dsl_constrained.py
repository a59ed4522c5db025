"""Schema-constrained decoding of DSL ASTs with llguidance (ml.dsl.constrained)."""

from __future__ import annotations

import copy
import json
import random

import llguidance  # noqa: F401  (pinned: a broken install must fail here, not skip)
import numpy as np
import pytest
import torch

from ml.dsl import build_domain, build_schema, generate_examples, is_valid
from ml.dsl.constrained import JsonSchemaLogitsProcessor, generate_json
from ml.dsl.format import ast_to_text, build_prompt, parse_completion, prompt_text
from ml.dsl.schema_grammar import X_GUIDANCE, closer, decoding_schema, grammar_for, ll_tokenizer, matcher
from ml.evaluation.lm import left_padded_batches
from ml.training.ast_tokenizer import build_ast_tokenizer
from ml.training.base_model import build_base_model

TRAIN_DOMAINS = (("library", 0), ("movies", 0), ("orders", 0))
# Schemas the tokenizer never saw: other domains, other seeds (other fields / operators / enum subsets).
UNSEEN_DOMAINS = (("weather", 3), ("flights", 2), ("recipes", 5))


def _schema(name: str, seed: int) -> dict:
    return build_schema(build_domain(name, seed))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a small shared CPU, oversubscribed threads make generation several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    texts = []
    for name, seed in TRAIN_DOMAINS:
        schema = _schema(name, seed)
        texts += [prompt_text(schema, e.text) + ast_to_text(e.ast) for e in generate_examples(build_domain(name, seed),
                                                                                                 25, seed=0)]
    return build_ast_tokenizer("tiny:gemma3_text", texts, [], 2000)


@pytest.fixture(scope="module")
def model(tok):
    return build_base_model("tiny:gemma3_text", tok, seed=0)


def _requests(tok, domains, per_domain: int, seed: int = 11):
    prompts, schemas = [], []
    for name, dseed in domains:
        domain = build_domain(name, dseed)
        schema = build_schema(domain)
        for e in generate_examples(domain, per_domain, seed=seed):
            prompts.append(build_prompt(tok, schema, e.text))
            schemas.append(schema)
    return prompts, schemas


def _valid(text: str, schema: dict) -> bool:
    ast, _ = parse_completion(text)
    return ast is not None and is_valid(ast, schema)


def _allowed(m, n_vocab: int) -> np.ndarray:
    bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(bits, bitorder="little")[:n_vocab])


# ---------------------------------------------------------------------------------------------------- schema


def test_decoding_schema_is_compact_ordered_and_leaves_the_original_alone():
    schema = _schema("library", 3)
    before = copy.deepcopy(schema)
    # A schema written with the "wrong" property order gets the training key order back.
    shuffled = copy.deepcopy(schema)
    comp = shuffled["$defs"]["comparison"]
    comp["properties"] = dict(reversed(list(comp["properties"].items())))
    shuffled["properties"] = dict(reversed(list(shuffled["properties"].items())))
    for s in (schema, shuffled):
        ds = decoding_schema(s)
        assert ds["x-guidance"] == X_GUIDANCE
        assert list(ds["properties"]) == ["filter", "sort", "limit"]
        assert list(ds["$defs"]["comparison"]["properties"]) == ["op", "field", "value"]
        assert list(ds["$defs"]["logical"]["properties"]) == ["op", "args"]
        assert list(ds["$defs"]["not"]["properties"]) == ["op", "arg"]
        assert list(ds["properties"]["sort"]["items"]["properties"]) == ["field", "order"]
        assert ds["$defs"]["comparison"]["anyOf"] == s["$defs"]["comparison"]["anyOf"]
    assert schema == before
    grammar_for(schema)  # llguidance takes it as is (raises otherwise)


def test_matcher_rejects_whitespace_wrong_key_order_and_schema_violations(tok):
    schema = _schema("library", 0)
    domain = build_domain("library", 0)
    author_ops = domain.operators_for(domain.field("author"))
    bad_op = next(op for op in domain.operators if op not in author_ops)
    cases = {
        '{"filter":{"op":"eq","field":"author","value":"Hugo"}}': True,
        '{"filter": {"op":"eq","field":"author","value":"Hugo"}}': False,  # free whitespace
        '{"filter":{"field":"author","op":"eq","value":"Hugo"}}': False,  # key order
        '{"limit":3,"filter":{"op":"eq","field":"author","value":"Hugo"}}': False,
        '{"filter":{"op":"eq","field":"author","value":3}}': False,  # value type of that field
        '{"filter":{"op":"eq","field":"author","value":""}}': False,  # minLength
        f'{{"filter":{{"op":"{bad_op}","field":"author","value":"Hugo"}}}}': False,  # operator not for strings
        '{"filter":{"op":"and","args":[{"op":"eq","field":"author","value":"Hugo"}]}}': False,  # minItems 2
        '{"filter":{"op":"eq","field":"author","value":"Hugo"},"limit":0}': False,  # minimum 1
        '{"filter":{"op":"eq","field":"author","value":"Hugo"},"limit":2.5}': False,  # integer
    }
    for text, expected in cases.items():
        m = matcher(tok, schema)
        ids = tok.encode(text, add_special_tokens=False)
        got = m.consume_tokens(ids) and m.is_accepting()
        assert got == expected, text


def test_canonical_completions_are_accepted_token_by_token(tok):
    n_vocab = ll_tokenizer(tok).vocab_size
    checked = 0
    for name, seed in TRAIN_DOMAINS + UNSEEN_DOMAINS:
        domain = build_domain(name, seed)
        schema = build_schema(domain)
        for e in generate_examples(domain, 12, seed=4, negative_ratio=0.0):
            assert e.valid
            text = ast_to_text(e.ast)
            ids = tok.encode(text, add_special_tokens=False)
            m = matcher(tok, schema)
            for t in ids:
                assert t in set(_allowed(m, n_vocab).tolist()), (text, tok.decode([t]))
                assert m.consume_token(t), m.get_error()
            assert m.is_accepting()
            assert tok.eos_token_id in _allowed(m, n_vocab)
            checked += 1
    assert checked == 6 * 12


def test_every_document_the_matcher_allows_validates_against_the_original_schema(tok):
    """Random walks over the token masks (closed by the budget closer when they run long) only ever give
    documents that the original schema (jsonschema) accepts."""
    lltok = ll_tokenizer(tok)
    close = closer(tok)
    rng = random.Random(0)
    eos = tok.eos_token_id
    n_docs = 0
    for name, seed in TRAIN_DOMAINS[:2] + UNSEEN_DOMAINS:
        schema = _schema(name, seed)
        for _ in range(8):
            m = matcher(tok, schema)
            ids: list[int] = []
            for _ in range(rng.randint(5, 60)):
                allowed = _allowed(m, lltok.vocab_size).tolist()
                if eos in allowed and (len(allowed) == 1 or rng.random() < 0.5):
                    break
                t = rng.choice([a for a in allowed if a != eos])
                assert m.consume_token(t)
                ids.append(t)
            rest = close.closing(m)
            assert rest is not None
            assert close.completes(m, rest)
            if rest:
                assert not close.completes(m, rest[:-1])  # one token short is not a document
                assert not m.is_accepting()  # completes() validated without consuming
            assert m.consume_tokens(rest) and m.is_accepting()
            text = tok.decode(ids + rest)
            doc = json.loads(text)
            assert is_valid(doc, schema), text
            n_docs += 1
    assert n_docs == 5 * 8


# ---------------------------------------------------------------------------------------------------- generation


def test_constrained_generation_always_validates_on_mixed_schemas(tok, model):
    # One batch of 8 rows over 4 schemas, two of them never seen by the tokenizer.
    domains = (TRAIN_DOMAINS[0], UNSEEN_DOMAINS[0], TRAIN_DOMAINS[1], UNSEEN_DOMAINS[1])
    prompts, schemas = _requests(tok, domains, per_domain=2)
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # interleave the schemas inside the batch
    prompts, schemas = [prompts[i] for i in order], [schemas[i] for i in order]
    res = generate_json(model, tok, prompts, schemas, max_new_tokens=40, batch_size=8)
    assert len(res.texts) == 8
    for text, schema in zip(res.texts, schemas):
        assert _valid(text, schema), text
        assert text == ast_to_text(json.loads(text))  # compact, training key order
    assert res.errors == [None] * 8
    assert any(res.closed)  # the untrained model writes digits forever: the length budget closed those rows
    assert len(res.mask_us) > 0 and all(us > 0 for us in res.mask_us)
    assert len(res.call_us) == len(res.mask_us) and res.seconds > 0

    # The same requests unconstrained: an untrained model almost never writes a valid object.
    free = generate_json(model, tok, prompts, None, max_new_tokens=40, batch_size=8, constrained=False)
    assert len(free.texts) == 8 and free.mask_us == []
    assert sum(_valid(t, s) for t, s in zip(free.texts, schemas)) <= 1


def test_greedy_fast_path_picks_what_the_full_mask_picks(tok, model):
    """generate_json's processor skips the mask of a row whose arg-max its matcher takes; greedy decoding must pick
    exactly the tokens the full mask leads to."""
    prompts, schemas = _requests(tok, (TRAIN_DOMAINS[0], UNSEEN_DOMAINS[0]), per_domain=2, seed=5)
    [(_, enc, width)] = list(left_padded_batches(tok, prompts, len(prompts), "cpu"))
    runs = {}
    for greedy in (False, True):
        proc = JsonSchemaLogitsProcessor(tok, schemas, [width] * len(prompts), max_new_tokens=48, greedy=greedy)
        out = model.generate(**enc, max_new_tokens=48, do_sample=False, top_k=None, top_p=None, temperature=None,
                             logits_processor=[proc], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        runs[greedy] = (out[:, width:].tolist(), proc)
    assert runs[True][0] == runs[False][0]
    assert runs[True][1].greedy_hits > 0 and runs[False][1].greedy_hits == 0
    assert runs[True][1].closed == runs[False][1].closed


def test_finished_rows_fixed_length_and_padded_vocabulary(tok):
    """Rows that finish early keep emitting EOS without breaking the processor; extra embedding rows past the
    tokenizer are never chosen."""
    padded = build_base_model("tiny:gemma3_text", tok, seed=1)
    padded.resize_token_embeddings(len(tok) + 45, mean_resizing=False)
    assert padded.get_output_embeddings().weight.shape[0] > len(tok)
    eos_before = padded.generation_config.eos_token_id
    prompts, schemas = _requests(tok, (UNSEEN_DOMAINS[2], TRAIN_DOMAINS[2]), per_domain=2, seed=3)
    res = generate_json(padded, tok, prompts, schemas, max_new_tokens=28, batch_size=4, fixed_length=True)
    for text, schema in zip(res.texts, schemas):
        assert _valid(text, schema), text
    assert len(res.mask_us) == 28  # one batch, exactly max_new_tokens steps
    assert padded.generation_config.eos_token_id == eos_before  # the shared model's config is left alone


def test_processor_masks_rows_after_eos_and_checks_the_batch(tok):
    schemas = [_schema("library", 0), _schema("weather", 3)]
    proc = JsonSchemaLogitsProcessor(tok, schemas, [2, 2])
    vocab = len(tok) + 7
    scores = torch.zeros(2, vocab)
    out = proc(torch.tensor([[5, 6], [5, 6]]), scores)  # nothing generated yet: both rows must open an object
    first = int(out[0].argmax())
    assert tok.decode([first]).startswith("{") and torch.isinf(out[:, len(tok):]).all()
    # Row 1 emits EOS right away (as if forced elsewhere); afterwards it only ever gets EOS, pads are ignored.
    out = proc(torch.tensor([[5, 6, first], [5, 6, tok.eos_token_id]]), scores)
    assert proc.finished == [False, True]
    out = proc(torch.tensor([[5, 6, first, 7], [5, 6, tok.eos_token_id, tok.pad_token_id]]), scores)
    assert torch.isfinite(out[1]).sum() == 1 and out[1, tok.eos_token_id] == 0
    assert proc.errors[1] is None and len(proc.mask_us) == 3
    with pytest.raises(ValueError):
        proc(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, vocab))


def test_unconstrained_rows_stop_at_the_end_of_their_first_json_object(tok):
    """ml.dsl.stopping: a row is done at the token that completes its first JSON object (what the scorer reads, so
    nothing after it changes a metric), not before, and a row with no object yet keeps going."""
    from ml.dsl.stopping import first_object_complete, json_end_stopping

    answer = '{"filter":{"op":"eq","field":"a","value":"}"}}'
    ids = tok(answer + ' and then {"more":1}', add_special_tokens=False)["input_ids"]
    prompt = tok("Request: x\nJSON:", add_special_tokens=False)["input_ids"]
    stop = json_end_stopping(tok, len(prompt))
    done_at = [k for k in range(1, len(ids) + 1)
               if stop(torch.tensor([prompt + ids[:k], prompt + ids[:k]]), None).all()]
    assert done_at, "never stopped"
    first = done_at[0]
    assert parse_completion(tok.decode(ids[:first]))[0] == json.loads(answer)  # the scorer reads the same object
    assert not first_object_complete(tok.decode(ids[: first - 1]))  # and not a token earlier
    assert not stop(torch.tensor([prompt + tok("no json here }", add_special_tokens=False)["input_ids"]]), None)[0]
