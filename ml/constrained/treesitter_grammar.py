"""Grammar-constrained decoding for the compact (format 2) tree-sitter AST text form (JavaScript, Java).

``TreeSitterGrammar`` is a pushdown automaton over the *model's* tokens (BPE pieces and the added AST tokens) that
admits only text which stays a prefix of a compact token sequence built from productions seen in real units
(``ml.constrained.treesitter_productions``): every node is one of its type's observed item sequences (its own
keywords and punctuation, written or left out as the codec tables say, ``<var>``, ``<nl>``, ``<close>``), every
child has a type and first/last token classes that a real node had at that place, and every leaf payload is in its
context's lexical language (identifiers that are not reserved words, decimal numbers, words in quoted strings and
line comments, else one of the texts seen there). So a finished sequence decodes with ``treesitter_compact.decode``
by construction, and it re-parses without syntax errors as far as gluing real productions keeps tree-sitter's
grammar (types, semicolons, statement starts); see docs/ast_first.md for what is not guaranteed.

It plugs into ``ml.constrained.python_grammar.GrammarLogitsProcessor`` (same ``initial_state`` / ``allowed`` /
``advance`` / ``is_complete`` interface). A mask depends only on a small key (payload lexer and its state, whether
the payload may end, the interned set of what may come at the next boundary, the budget slack) and is built once per
key by running every vocabulary piece through the payload lexers; a step is a few dict lookups.

Length budget: each trie node knows the fewest tokens that finish it with each (first, last) class pair; once the
budget left is within ``MARGIN`` of what the open nodes need, only edges on a cheapest completion are allowed.
"""

from __future__ import annotations

import torch

from ml.codec import treesitter_compact as compact
from ml.codec.tokens import SEP
from ml.codec.treesitter_codec import COMMENTS
from ml.constrained import treesitter_productions as tp
from ml.constrained.python_grammar import _bytes_to_unicode
from ml.constrained.ts_lexers import LT, M_BOUND, M_PEND, M_PLAIN, M_RAW, SP, lexer_for, simulate_piece

__all__ = ["TreeSitterGrammar", "TsState"]

INF = 1 << 30


class TsState:
    """Where a generated sequence stands; ``advance`` returns a new state."""

    __slots__ = ("stack", "mode", "leaf", "lex", "lstate", "text", "budget", "finished")

    def copy(self) -> TsState:
        s = TsState.__new__(TsState)
        s.stack = list(self.stack)
        s.mode, s.leaf, s.lex, s.lstate, s.text = self.mode, self.leaf, self.lex, self.lstate, self.text
        s.budget, s.finished = self.budget, self.finished
        return s


class TreeSitterGrammar:
    """Token-level constraint for one tree-sitter slice's compact AST text (see the module docstring).

    ``table``: a production table (``treesitter_productions.build`` / ``load``); default: the committed one."""

    MAX_DEPTH = 40
    MARGIN = 6

    def __init__(self, tokenizer, language: str, vocab_size: int | None = None, table: dict | None = None) -> None:
        table = table if table is not None else tp.load(language)
        self.language = language
        self.tab = compact.tables(language)
        n = len(tokenizer)
        self.vocab_size, self.eos_id = max(n, vocab_size or 0), tokenizer.eos_token_id
        vocab, added = tokenizer.get_vocab(), tokenizer.get_added_vocab()
        self.tok_id, self.sep_id = dict(added), added.get(SEP)
        specials = set(tokenizer.all_special_ids)
        dec = {c: b for b, c in _bytes_to_unicode().items()}
        self.pieces: dict[int, bytes] = {}
        for tok, i in vocab.items():
            if tok in added or i in specials or i >= n:
                continue
            try:
                piece = bytes(dec[c] for c in tok)
            except KeyError:
                continue
            if LT not in piece:  # a payload never holds "<": structural tokens are added tokens
                self.pieces[i] = piece
        self._piece_items = sorted(self.pieces.items())
        self.trie = tp.ProductionGraph(table["productions"], self.tab, COMMENTS[language])
        self._kinds = {tuple(c): (k, frozenset(a) if k == "set" else a) for c, k, a in table["payloads"]}
        self.lexers, self._item_ids, self._slots, self._slot_ids, self._slot_values = {}, {}, {}, {}, []
        self._allowed_cache, self._masks, self._piece_cache, self._child_edges, self._by_token = {}, {}, {}, {}, {}
        self._costs()
        self._empty = torch.zeros(self.vocab_size, dtype=torch.bool)
        self._eos_mask = self._empty.clone()
        if self.eos_id is not None:
            self._eos_mask[self.eos_id] = True

    # -- tables ---------------------------------------------------------------------------------

    def _item_token(self, item: tuple) -> int | None:
        if item in self._item_ids:
            return self._item_ids[item]
        tok = {"v": compact.VAR, "e": compact.EMPTY, "l": compact.NL, "c": compact.CLOSE}.get(item[0])
        if tok is None:
            tok = item[1] if item[0] == "t" else f"<{item[0]}:{item[1]}>"
        self._item_ids[item] = tid = self.tok_id.get(tok)
        return tid

    def lexer(self, ctx: tuple, sigs: frozenset):
        """The payload lexer of a leaf in context ``ctx`` whose text must have one of the class pairs ``sigs``."""
        key = (ctx, sigs)
        lx = self.lexers.get(key)
        if lx is None:
            lx = self.lexers[key] = lexer_for(self.language, self._kinds.get(ctx, ("set", frozenset())), sigs)
        return lx

    def _leaf_cost(self, item: tuple) -> int:
        if self._item_token(item) is None:
            return INF
        lx = self.lexer((item[1], self._leaf_parent, item[4]), frozenset([tuple(item[2:4])]))
        if lx is None:
            return INF
        const = self.tab.const.get(item[1])
        if const is not None and lx.accepts_text(const):
            return 1
        return 2

    def _costs(self) -> None:
        """``cost[n][sig]``: fewest tokens from trie node ``n`` to an end with ``sig`` (a fixed point over types)."""
        trie = self.trie
        owner = {}
        for ntype, r in trie.root.items():
            stack = [r]
            while stack:
                n = stack.pop()
                if n not in owner:
                    owner[n] = ntype
                    stack.extend(trie.edges[n].values())
        self.owner = owner
        order = sorted(owner, reverse=True)  # mostly children before parents: fewer rounds
        self.cost: list[dict] = [{} for _ in trie.edges]
        self.edge_cost: list[dict] = [{} for _ in trie.edges]
        for n in order:
            self._leaf_parent = owner[n]
            for item in trie.edges[n]:
                if item[0] == "n":
                    self.edge_cost[n][item] = self._leaf_cost(item)
                elif item[0] != "N":
                    self.edge_cost[n][item] = 1 if self._item_token(item) is not None else INF
        changed = True
        while changed:
            changed = False
            for n in order:
                best = {sig: 0 for sig in trie.ends[n]}
                for item, target in trie.edges[n].items():
                    if item[0] == "N":
                        r = trie.root.get(item[1])
                        c = INF if r is None or self._item_token(item) is None else 1 + self.cost[r].get(
                            tuple(item[2:4]), INF)
                        self.edge_cost[n][item] = c
                    else:
                        c = self.edge_cost[n][item]
                    if c >= INF:
                        continue
                    for sig, rest in self.cost[target].items():
                        if c + rest < best.get(sig, INF):
                            best[sig] = c + rest
                if best != self.cost[n]:
                    self.cost[n] = best
                    changed = True

    def _need(self, n: int, weights: frozenset) -> int:
        """Fewest tokens to finish node ``n`` and then everything above it: ``weights`` pairs each class pair the
        node may end with with what its ancestors need after that (relative to the frame's base)."""
        cost = self.cost[n]
        return min((cost.get(s, INF) + e for s, e in weights), default=INF)

    def _end_sig(self, n: int, weights: frozenset) -> tuple | None:
        ends = self.trie.ends[n]
        best = min(((e, s) for s, e in weights if s in ends), default=None)
        return None if best is None else best[1]

    def _edges(self, n: int, demand: frozenset, slack: int) -> list:
        """The items that may follow at node ``n`` under ``demand``: those whose cheapest completion costs at most
        ``slack`` tokens more than the node's."""
        key = (n, demand, slack)
        out = self._allowed_cache.get(key)
        if out is None:
            need = self._need(n, demand)
            out = []
            for item, target in self.trie.edges[n].items():
                c = self.edge_cost[n][item]
                if c >= INF:
                    continue
                total = c + self._need(target, demand)
                if total < INF and total - need <= slack:
                    out.append((item, target))
            self._allowed_cache[key] = out
        return out

    # -- states ---------------------------------------------------------------------------------

    def initial_state(self, budget: int | None = None) -> TsState:
        s = TsState()
        root = self.trie.root[tp.ROOT]
        s.stack = [(tp.ROOT, root, frozenset((sig, 0) for sig in self.cost[root]), compact.START, 0)]
        s.mode, s.leaf, s.lex, s.lstate, s.text = M_BOUND, None, None, None, b""
        s.budget, s.finished = budget, False
        return s

    def _remaining(self, stack: list) -> int:
        if not stack:
            return 0
        ntype, n, demand, prev, base = stack[-1]
        return self._need(n, demand) + base

    def _slack(self, s: TsState) -> int:
        """How many tokens beyond a cheapest completion the next item may cost (bucketed: it is part of the key)."""
        if len(s.stack) > self.MAX_DEPTH:
            return 0
        if s.budget is None:
            return INF
        raw = s.budget - self._remaining(s.stack) - (s.mode != M_BOUND) - self.MARGIN
        if raw < 16:
            return max(raw, 0)
        return next((b for b in (128, 96, 64, 48, 32, 24, 16) if raw >= b), 16) if raw < 192 else INF

    def _child_demand(self, n: int, demand: frozenset, kind: str, sym: str, slack: int) -> dict:
        """Class pair -> what the node (and its ancestors) need after a child ``sym`` that ends with it."""
        key = (n, demand, kind, sym, slack)
        out = self._child_edges.get(key)
        if out is None:
            out = self._child_edges[key] = {tuple(item[2:4]): self._need(t, demand)
                                            for item, t in self._edges(n, demand, slack)
                                            if item[0] == kind and item[1] == sym}
        return out

    def _push(self, stack: list, sym: str, slack: int) -> None:
        ntype, n, demand, prev, base = stack[-1]
        after = self._child_demand(n, demand, "N", sym, slack)
        low = min(after.values())
        weights = frozenset((sig, v - low) for sig, v in after.items())
        stack.append((sym, self.trie.root[sym], weights, compact.START, base + low))

    def _done(self, stack: list, sym: str, sig: tuple) -> None:
        """The child ``sym`` of the top node ended with classes ``sig``: move the top node past it, and close every
        node that this completes (arity closing, the pseudo-root)."""
        while True:
            ntype, n, demand, prev, below = stack[-1]
            target = self._child_edges.get((n, sym, sig))
            if target is None:
                for item, t in self.trie.edges[n].items():
                    if item[0] in ("N", "n") and item[1] == sym and tuple(item[2:4]) == sig:
                        target = self._child_edges[(n, sym, sig)] = t
                        break
                else:
                    raise ValueError(f"{sym} {sig} cannot follow here")
            stack[-1] = (ntype, target, demand, sym, below)
            if not self.trie.ends[target] or self.trie.edges[target]:
                return
            sig = self._end_sig(target, demand)
            stack.pop()
            sym = ntype
            if not stack:
                return

    def _lazy_end(self, stack: list) -> tuple | None:
        """The sig with which the top node may end without a token (an arity-0 node still open to ``<var>``)."""
        ntype, n, demand, prev, below = stack[-1]
        return self._end_sig(n, demand) if len(stack) > 1 else None

    def is_complete(self, s: TsState) -> bool:
        if s.mode == M_BOUND:
            return not s.stack
        if s.mode in (M_PLAIN, M_RAW) and self._can_end(s):
            stack = list(s.stack)
            self._end_leaf(stack, s)
            return not stack
        return False

    # -- slots and masks -------------------------------------------------------------------------

    def _slot(self, stack: list, slack: int) -> int:
        """Interned id of what may come at a boundary: (structural token ids, bare lexer, complete)."""
        if not stack:
            return self._intern((frozenset(), None, True))
        ntype, n, demand, prev, below = stack[-1]
        key = (ntype, n, demand, prev, slack, len(stack) > 1 and self._lazy_end(stack) is not None)
        sid = self._slots.get(key)
        if sid is not None and not key[-1]:
            return sid
        ids, bare = set(), None
        bare_type = self.tab.bare.get((ntype, prev))
        bare_sigs = set()
        for item, _ in self._edges(n, demand, slack):
            tid = self._item_token(item)
            if tid is not None:
                ids.add(tid)
            if item[0] == "n" and item[1] == bare_type:
                bare_sigs.add(tuple(item[2:4]))
                bare = (item[1], ntype, item[4])
        if bare is not None:
            bare = self.lexer(bare, frozenset(bare_sigs))
        complete = False
        if key[-1]:
            parent = list(stack)
            parent.pop()
            self._done(parent, ntype, self._lazy_end(stack))
            pids, pbare, complete = self._slot_value(self._slot(parent, slack))
            ids |= pids
            bare = bare or pbare
        sid = self._intern((frozenset(ids), bare, complete))
        self._slots[key] = sid
        return sid

    def _intern(self, value: tuple) -> int:
        sid = self._slot_ids.get(value)
        if sid is None:
            sid = self._slot_ids[value] = len(self._slot_values)
            self._slot_values.append(value)
        return sid

    def _slot_value(self, sid: int) -> tuple:
        return self._slot_values[sid]

    def _can_end(self, s: TsState) -> bool:
        if s.mode == M_RAW and not s.text:
            const = self.tab.const.get(s.leaf[0])
            return const is not None and s.lex.accepts_text(const)
        return s.lex.accepting(s.lstate, s.text)

    def _leaf_sig(self, s: TsState) -> tuple:
        text = s.text.decode("utf-8", "replace") if s.text else self.tab.const.get(s.leaf[0], "")
        return s.lex.sig_of(text)

    def _end_leaf(self, stack: list, s: TsState) -> None:
        self._done(stack, s.leaf[0], self._leaf_sig(s))

    def key(self, s: TsState):
        if s.finished:
            return "finished"
        if s.mode == M_BOUND and not s.stack:
            return "complete"
        slack = self._slack(s)
        if s.mode == M_BOUND:
            return (M_BOUND, None, None, False, True, self._slot(s.stack, slack), slack, False)
        can_end = s.mode in (M_PLAIN, M_RAW) and self._can_end(s)
        after = None
        if can_end:
            stack = list(s.stack)
            self._end_leaf(stack, s)
            after = self._slot(stack, slack)
        cont_ok = s.mode == M_PEND or s.lex.cont_ok(s.lstate, s.text)
        return (s.mode, s.lex, s.lstate, can_end, cont_ok, after, slack, bool(s.text))

    def allowed(self, s: TsState) -> torch.Tensor:
        k = self.key(s)
        m = self._masks.get(k)
        if m is None:
            m = self._masks[k] = self._build(k)
        return m

    def _build(self, key) -> torch.Tensor:
        if key in ("finished", "complete"):
            return self._eos_mask
        mode, lex, lstate, can_end, cont_ok, slot, slack, nonempty = key
        ids: set = set()
        pieces_ok = True
        if mode == M_BOUND:
            structs, bare, complete = self._slot_value(slot)
            ids |= structs
            if complete and self.eos_id is not None:  # an arity-0 node that may still take <var> ends the tree
                ids.add(self.eos_id)
            start_lex = bare
        elif mode == M_PEND:
            start_lex = lex
        else:
            start_lex = None
            if can_end:
                structs, bare, complete = self._slot_value(slot)
                ids |= structs
                if complete and self.eos_id is not None:
                    ids.add(self.eos_id)
                if mode == M_RAW and bare is not None and nonempty and self.sep_id is not None:
                    ids.add(self.sep_id)
                if slack <= 0:
                    pieces_ok = False
        if pieces_ok:
            after_bare = self._slot_value(slot)[1] if can_end and mode == M_PLAIN else None
            pkey = (mode, lex, lstate, cont_ok, start_lex, can_end, after_bare, slack <= 0)
            chosen = self._piece_cache.get(pkey)
            if chosen is None:
                good, finishing = [], []
                for i, piece in self._piece_items:
                    r = simulate_piece(piece, mode, lex, lstate, cont_ok, start_lex, can_end, after_bare)
                    if r is not None:
                        good.append(i)
                        if r[1] is not None and r[0].accepting(r[1], None):
                            finishing.append(i)
                chosen = self._piece_cache[pkey] = finishing if slack <= 0 and finishing else good
            ids.update(chosen)
        mask = self._empty.clone()
        if ids:
            mask[torch.tensor(sorted(ids), dtype=torch.long)] = True
        return mask

    # -- advancing ------------------------------------------------------------------------------

    def advance(self, state: TsState, token_id: int) -> TsState:
        token_id = int(token_id)
        mask = self.allowed(state)
        if not (0 <= token_id < mask.shape[0]) or not bool(mask[token_id]):
            raise ValueError(f"token {token_id} is not allowed here")
        s = state.copy()
        slack = self._slack(state)
        if s.budget is not None:
            s.budget -= 1
        if token_id == self.eos_id:
            s.finished = True
            return s
        piece = self.pieces.get(token_id)
        if piece is not None:
            if s.mode == M_PLAIN and piece[0] == SP:  # ends this bare payload, starts the next
                self._end_leaf(s.stack, s)
                s.mode, s.lex = M_PEND, self._slot_value(self._slot(s.stack, slack))[1]
                piece = piece[1:]
                if not piece:
                    return s
            if s.mode in (M_BOUND, M_PEND):
                if self._lazy_end(s.stack) is not None and not self._own_bare(s.stack, slack):
                    self._pop_lazy(s.stack)
                lex = self._slot_value(self._slot(s.stack, slack))[1] if s.mode == M_BOUND else s.lex
                s.leaf = (self.tab.bare[(s.stack[-1][0], s.stack[-1][3])],)
                s.mode, s.lex, s.lstate, s.text = M_PLAIN, lex, lex.start, b""
            for c in piece:
                s.lstate = s.lex.step(s.lstate, c)
            s.text += piece
            return s
        if s.mode in (M_PLAIN, M_RAW):
            self._end_leaf(s.stack, s)
            s.mode, s.leaf, s.lex, s.lstate, s.text = M_BOUND, None, None, None, b""
        if token_id == self.sep_id:
            stack = s.stack
            bare = self._slot_value(self._slot(stack, slack))[1]
            s.mode, s.lex = M_PEND, bare
            return s
        self._feed(s, token_id, slack)
        return s

    def _own_bare(self, stack: list, slack: int) -> bool:
        ntype, n, demand, prev, below = stack[-1]
        bt = self.tab.bare.get((ntype, prev))
        return any(item[0] == "n" and item[1] == bt for item, _ in self._edges(n, demand, slack))

    def _pop_lazy(self, stack: list) -> None:
        sig = self._lazy_end(stack)
        ntype = stack.pop()[0]
        self._done(stack, ntype, sig)

    def _feed(self, s: TsState, token_id: int, slack: int) -> None:
        stack = s.stack
        while True:
            ntype, n, demand, prev, below = stack[-1]
            key = (n, demand, slack)
            by_token = self._by_token.get(key)
            if by_token is None:
                by_token = self._by_token[key] = {}
                for item, target in self._edges(n, demand, slack):
                    by_token.setdefault(self._item_token(item), (item, target))
            if token_id in by_token:
                item, target = by_token[token_id]
                if item[0] == "N":
                    self._push(stack, item[1], slack)
                elif item[0] == "n":
                    sigs = frozenset(self._child_demand(n, demand, "n", item[1], slack))
                    s.mode, s.leaf, s.text = M_RAW, (item[1],), b""
                    s.lex = self.lexer((item[1], ntype, item[4]), sigs)
                    s.lstate = s.lex.start
                else:
                    stack[-1] = (ntype, target, demand, prev, below)
                    if self.trie.ends[target] and not self.trie.edges[target]:
                        sig = self._end_sig(target, demand)
                        stack.pop()
                        if stack:
                            self._done(stack, ntype, sig)
                return
            if self._lazy_end(stack) is None:
                raise ValueError(f"token {token_id} has no item here")
            self._pop_lazy(stack)
