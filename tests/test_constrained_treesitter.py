"""The tree-sitter grammar automaton (ml.constrained.treesitter_grammar): real units' encodings pass it token by token
(soundness of the automaton against the codec), and what a random tiny model samples under its mask is judged valid by
the slice's judge (decodes and re-parses with no syntax error)."""

from __future__ import annotations

import pytest
import torch

from ml.codec.tokens import SEP, tokens_to_text
from ml.constrained import GrammarLogitsProcessor
from ml.constrained import treesitter_productions as tp
from ml.constrained.treesitter_grammar import TreeSitterGrammar
from ml.languages import get_language
from ml.training import build_ast_tokenizer, build_base_model

JS_UNITS = [
    "function f(a, b) { return a + b; }",
    "function g(x) { const y = x * 2; return y; }",
    "function h(xs) { let t = 0; for (const x of xs) { t += x; } return t; }",
    "function k(a) {\n  if (a) { return 1 }\n  return 0\n}",
    "function s(n) { return 'hello world ' + n + \"x\"; }",
    "(a) => { a.b(c, 1); // note\n  return [a, 2] }",
    "function add (a, b) {\n  return a + b\n}",
    "async function load (dir) {\n  const entries = await readdir(dir)\n  return entries.map(e => e.name)\n}",
    "function pick (obj, keys) {\n  const out = {}\n  for (const k of keys) {\n    out[k] = obj[k]\n  }\n"
    "  return out\n}",
    "function cmp (a, b) { return a < b ? -1 : a > b ? 1 : 0 }",
    "function loop (n) {\n  let i = 0\n  while (i < n) {\n    i++\n  }\n  return i\n}",
    "function safe (fn) {\n  try {\n    return fn()\n  } catch (err) {\n    return null\n  }\n}",
    "function greet (name) {\n  const msg = `hello ${name}!`\n  return msg\n}",
    "function sw (x) {\n  switch (x) {\n    case 1:\n      return 'one'\n    default:\n      return 'many'\n  }\n}",
    "function make () {\n  return { a: 1, b: [1, 2, 3], c: null }\n}",
    "function neg (x) { return !x && typeof x !== 'string' }",
    "function thrower (msg) {\n  throw new Error(msg)\n}",
    "function each (list, cb) {\n  list.forEach((item, i) => {\n    cb(item, i)\n  })\n}",
    "function count (s) {\n  let n = 0\n  for (let i = 0; i < s.length; i++) {\n    if (s[i] === 'a') n++\n"
    "  }\n  return n\n}",
    "function first ([a, b]) { return a }",
    "function opts ({ a, b = 2 }) { return a + b }",
    "function dflt (a = 1, ...rest) { return rest.length + a }",
    "function * gen (n) {\n  for (let i = 0; i < n; i++) yield i\n}",
    "function cls () {\n  return this.value ?? undefined\n}",
    "function del (o) {\n  delete o.key\n  return o instanceof Object\n}",
]
JAVA_UNITS = [
    "int f(int a, int b) { return a + b; }",
    "String g(String s) { if (s == null) { return \"none here\"; } return s.trim(); }",
    "void h(int[] xs) { int t = 0; for (int x : xs) { t += x; } System.out.println(t); }",
    "public static int max(int a, int b) { return a > b ? a : b; }",
    "private boolean isEmpty() { return size == 0; }",
    "public void clear() { for (int i = 0; i < size; i++) { elements[i] = null; } size = 0; }",
    "public int indexOf(Object o) { int i = 0; while (i < size) { if (o.equals(data[i])) return i; i++; } return -1; }",
    "Object get(int index) { if (index < 0 || index >= size) throw new IndexOutOfBoundsException();"
    " return data[index]; }",
    "public String toString() { StringBuilder sb = new StringBuilder(); sb.append(\"[\"); return sb.toString(); }",
    "static long sum(long[] a) { long s = 0L; for (long x : a) s += x; return s; }",
    "protected void check(String name) throws IOException { if (name.isEmpty()) { throw new IOException(name); } }",
    "public int hashCode() { return Objects.hash(name, value); }",
    "public boolean equals(Object other) { if (this == other) return true; return other instanceof Pair; }",
    "void run() { try { work(); } catch (Exception e) { log(e); } finally { done = true; } }",
    "int sign(int x) { switch (x) { case 0: return 0; default: return x < 0 ? -1 : 1; } }",
    "public List<String> names() { List<String> out = new ArrayList<>(); out.add(name); return out; }",
    "char last(String s) { return s.charAt(s.length() - 1); }",
    "double mean(double[] xs) { double s = 0; for (double x : xs) { s += x; } return s / xs.length; }",
    "void swap(int[] a, int i, int j) { int t = a[i]; a[i] = a[j]; a[j] = t; }",
    "public final synchronized void setName(String name) { this.name = Objects.requireNonNull(name); }",
    "boolean any(boolean... flags) { for (boolean f : flags) { if (f) { return true; } } return false; }",
    "int count(String s, char c) { int n = 0; for (int i = 0; i < s.length(); i++) {"
    " if (s.charAt(i) == c) { n++; } } return n; }",
    "Runnable task() { return () -> System.out.println(\"done\"); }",
    "int[] copy(int[] a) { int[] b = new int[a.length]; System.arraycopy(a, 0, b, 0, a.length); return b; }",
]
UNITS = {"javascript": JS_UNITS, "java": JAVA_UNITS}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _texts(language: str) -> list[str]:
    codec = get_language(language).codec
    return [tokens_to_text(codec.encode(code, "compact")) for code in UNITS[language]]


@pytest.fixture(scope="module", params=["javascript", "java"])
def setup(request):
    language = request.param
    texts = _texts(language)
    vocab = [*get_language(language).codec.vocabulary(), SEP]
    tok = build_ast_tokenizer("tiny:qwen2", texts * 4, vocab, vocab_size=400)
    return language, texts, tok


def _feed(grammar: TreeSitterGrammar, tok, text: str) -> int | None:
    """Index of the first token the mask refuses (len(ids): the end is refused); None when all pass."""
    ids = tok.encode(text, add_special_tokens=False)
    state = grammar.initial_state(None)
    for j, i in enumerate(ids):
        if not bool(grammar.allowed(state)[i]):
            return j
        state = grammar.advance(state, i)
    return None if bool(grammar.allowed(state)[tok.eos_token_id]) and grammar.is_complete(state) else len(ids)


def test_real_units_pass_the_automaton_token_by_token(setup):
    language, texts, tok = setup
    # Productions read from these units: every unit's own sequence must pass, under the tokenizer's BPE pieces.
    grammar = TreeSitterGrammar(tok, language, vocab_size=len(tok), table=tp.build(language, UNITS[language]))
    refused = {code: _feed(grammar, tok, text) for code, text in zip(UNITS[language], texts)}
    assert {code: j for code, j in refused.items() if j is not None} == {}
    # ... and a sequence cut short is not complete, one with a foreign token is refused at that token.
    ids = tok.encode(texts[0], add_special_tokens=False)
    state = grammar.initial_state(None)
    for i in ids[:-1]:
        state = grammar.advance(state, i)
    assert not grammar.is_complete(state) and not bool(grammar.allowed(state)[tok.eos_token_id])
    assert not bool(grammar.allowed(grammar.initial_state(None))[tok.convert_tokens_to_ids("<close>")])


def test_the_committed_tables_are_current_and_admit_common_units(setup):
    language, texts, tok = setup
    table = tp.load(language)  # raises when the codec's compact format moved on
    assert table["units"] >= 1000
    grammar = TreeSitterGrammar(tok, language, vocab_size=len(tok))
    passed = sum(_feed(grammar, tok, text) is None for text in texts)
    assert passed >= len(texts) // 2, f"{passed}/{len(texts)} common units pass the committed {language} grammar"


def test_sampling_under_the_mask_gives_only_valid_units(setup):
    language, texts, tok = setup
    spec = get_language(language)
    model = build_base_model("tiny:qwen2", tok, seed=0)
    vocab_size = model.config.vocab_size
    make = spec.grammar_factory(tok, vocab_size, 96)  # the registry's factory, as ast_eval uses it
    n = 12
    prompt = torch.tensor([[tok.eos_token_id]] * n)
    proc = make([1] * n)
    assert isinstance(proc, GrammarLogitsProcessor)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=96, do_sample=True,
                             logits_processor=[proc], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    samples = []
    for row in out.tolist():
        ids = row[1:]
        assert tok.eos_token_id in ids, "the length budget closes every tree in time"
        samples.append(tok.decode(ids[: ids.index(tok.eos_token_id)]))
    judged = [spec.judge(text) for text in samples]
    assert [j.valid for j in judged] == [True] * n, [s for s, j in zip(samples, judged) if not j.valid]
    assert len({j.source for j in judged}) > n // 2  # sampled, not one tree repeated
