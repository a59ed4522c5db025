"""Grammar-constrained decoding of compact Python AST text (ml.constrained)."""

from __future__ import annotations

import ast
import os
import random
import sysconfig
import warnings
from functools import cache

import pytest
import torch

from ml.codec import python_ast as pa
from ml.codec.tokens import text_to_tokens, tokens_to_text
from ml.constrained import GrammarLogitsProcessor, PythonAstGrammar

torch.set_num_threads(1)


def _stdlib_functions(step: int, limit: int) -> list[ast.Module]:
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    out = []
    for path in paths[::step]:
        try:
            with open(path, encoding="utf-8") as fh, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append(ast.Module(body=[node], type_ignores=[]))
                if len(out) >= limit:
                    return out
    return out


def _restricted(module: ast.Module) -> str | None:
    """Why the grammar deliberately refuses this (valid) function, or None."""
    for node in ast.walk(module):
        if isinstance(node, (ast.Global, ast.Nonlocal, ast.Match, ast.TryStar)):
            return type(node).__name__
        if isinstance(node, ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Yield, ast.YieldFrom)):
                    return "yield in async def"
        if isinstance(node, ast.Constant) and node.kind is not None:
            return "Constant.kind"
        number = isinstance(node, ast.Constant) and isinstance(node.value, (complex, float))
        if number and not repr(node.value)[0].isdigit():
            if repr(node.value) != "inf":
                return "odd constant"
        if isinstance(node, (ast.With, ast.AsyncWith)) and len(node.items) > 4:
            return "many with items"
        for name in ("id", "arg", "attr", "name", "asname", "module"):
            v = getattr(node, name, None)
            if isinstance(v, str) and not v.isascii():
                return "non-ASCII identifier"
    return None


@cache
def _setup():
    from ml.training.ast_tokenizer import build_ast_tokenizer

    modules = _stdlib_functions(step=7, limit=400)
    texts = [tokens_to_text(pa.encode_tree(m)) for m in modules]
    tok = build_ast_tokenizer("tiny:qwen2", texts, pa.structural_vocabulary(), vocab_size=2000)
    return tok, PythonAstGrammar(tok), modules, texts


def _check_text(text: str) -> ast.Module:
    tree = pa.decode_tree(text_to_tokens(text), "compact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(ast.fix_missing_locations(tree), "<gen>", "exec")
    return tree



def test_grammar_reads_only_the_public_codec_tables() -> None:
    """The automaton follows the codec through its documented tables, not its private ones."""
    import inspect
    import re

    from ml.constrained import python_grammar

    source = inspect.getsource(python_grammar)
    assert not re.findall(r"\bpa\._\w+", source)
    assert python_grammar.SPECS is pa.NODE_SPECS and python_grammar.EXPR_TAGS == pa.node_tags("expr")


def test_gold_stdlib_sequences_are_accepted() -> None:
    tok, g, modules, texts = _setup()
    assert len(modules) >= 300
    accepted = refused = 0
    for module, text in zip(modules, texts):
        why = _restricted(module)
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        state = g.initial_state()
        ok = True
        for i, t in enumerate(ids):
            if not bool(g.allowed(state)[t]):
                ok = False
                assert why is not None, f"gold token {i} {g._name(t)!r} refused in {module.body[0].name}: {text[:300]}"
                break
            state = g.advance(state, t)
        if ok:
            assert g.is_complete(state), module.body[0].name
            assert bool(g.allowed(state)[tok.eos_token_id]) and int(g.allowed(state).sum()) == 1
            accepted += 1
        else:
            refused += 1
    assert accepted >= 0.97 * len(modules), (accepted, refused)


@pytest.mark.parametrize("seed", range(4))
def test_random_walks_end_complete_and_compile(seed: int) -> None:
    tok, g, _, _ = _setup()
    rng = random.Random(seed)
    budget = 160
    for _ in range(60):
        state = g.initial_state(budget=budget)
        ids = []
        while not g.is_complete(state):
            cand = g.allowed(state).nonzero().flatten().tolist()
            assert cand, [g._name(x) for x in ids[-20:]]
            t = rng.choice(cand)
            state = g.advance(state, t)
            ids.append(t)
        assert len(ids) <= budget
        _check_text(tok.decode(ids))


def test_disallowed_tokens_raise_and_states_are_immutable() -> None:
    tok, g, _, texts = _setup()
    state = g.initial_state()
    mask = g.allowed(state)
    bad = int((~mask).nonzero()[0])
    with pytest.raises(ValueError):
        g.advance(state, bad)
    with pytest.raises(ValueError):
        g.advance(state, tok.eos_token_id)  # not complete yet
    ids = tok.encode(texts[0], add_special_tokens=False)
    s1 = g.advance(state, ids[0])
    s2 = g.advance(s1, ids[1])
    assert s1.stack != s2.stack and g.allowed(s1)[ids[1]]  # s1 unchanged by advancing it
    # an identifier that is a keyword cannot end: '<FunctionDef>if<close>' is refused
    s = g.initial_state()
    for t in tok.encode("<Module><indent><FunctionDef>", add_special_tokens=False):
        s = g.advance(s, t)
    for t in tok.encode("if", add_special_tokens=False):
        s = g.advance(s, t)
    assert not bool(g.allowed(s)[tok.convert_tokens_to_ids("<close>")])
    # a Store position takes no literal
    s = g.initial_state()
    for t in tok.encode("<Module><indent><FunctionDef>f<close><indent><Assign>", add_special_tokens=False):
        s = g.advance(s, t)
    for lit in ("<str>", "<const:None>", "<Call>"):
        assert not bool(g.allowed(s)[tok.convert_tokens_to_ids(lit)])


def test_generate_with_processor_on_tiny_model() -> None:
    from ml.training.base_model import build_base_model

    tok, g, _, _ = _setup()
    model = build_base_model("tiny:qwen2", tok, seed=0)
    model.eval()
    prompt = torch.tensor([[tok.convert_tokens_to_ids("<Module>")]] * 6)
    max_new = 96
    proc = GrammarLogitsProcessor(
        g, prompt_length=0, eos_token_id=tok.eos_token_id, vocab_size=model.config.vocab_size,
        max_new_tokens=max_new + 1, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new, do_sample=True,
            logits_processor=[proc], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    assert proc.timings_us
    for row in out.tolist():
        ids = [t for t in row if t not in (tok.eos_token_id, tok.pad_token_id)]
        _check_text(tok.decode(ids))
