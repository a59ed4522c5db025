"""The two denoisers: a Graph U-Net (PyTorch Geometric) and a Transformer of the same size over the same trees.

Both read a corrupted tree and give, for every node, logits over the label vocabulary; what differs is how they
see the tree.

* ``GraphUNet``: node features are the label and the field the node fills; edges are typed (``EDGE_TYPES``: child,
  parent, siblings both ways, dataflow both ways), the type embedded as an edge feature. An encoder of GAT blocks
  (attention over typed edges + a feed-forward layer, pre-norm, residual) pools by ``TopKPooling`` (gPool) to a
  coarse "concept" graph level by level (the two-hop edges added first, as in gPool, so the coarse graph stays
  connected), a bottleneck block runs there, and the decoder unpools (gUnpool: the kept
  nodes scatter back to their places) and adds the encoder's skip at each level before its own block.
* ``TreeTransformer``: the tree as a sequence, one token per node in pre-order and an ``<end>`` token closing each
  node that has children (so the sequence is the tree: it decodes back); each token embeds its label, its field
  and its position. A pre-norm ``nn.TransformerEncoder``; the logits at the node tokens are the output.

Each model gives its logits for a list of graphs through its own ``logits(graphs, vocab)`` (batching them its
way); training and decoding call that, never ``isinstance``.

``transformer_matching`` picks the Transformer's depth and feed-forward width so that its parameter count is
within 10% of a given one (the comparison's fairness condition).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from torch_geometric.nn import GATConv, TopKPooling

from ml.graph_repair.asg import EDGE_TYPES, Asg, table
from ml.graph_repair.grammar import END, Vocabulary

__all__ = ["FIELDS", "GraphBatch", "GraphUNet", "SeqBatch", "TreeTransformer", "count_parameters",
           "graph_batch", "sequence_batch", "transformer_matching"]

FIELDS = ["", END, *sorted({f for _, fields in table().values() for f, _, _ in fields})]  # Python's
_FIELD_ID = {f: i for i, f in enumerate(FIELDS)}


@cache
def field_index(language: str) -> dict[str, int]:
    """Field ids of a language's graphs: ``""`` (the root), ``<end>``, then its fields (Python: ``FIELDS``)."""
    if language == "python":
        return _FIELD_ID
    from ml.graph_repair.backend import backend_for

    return {f: i for i, f in enumerate(["", END, *backend_for(language).field_names])}
_EDGE_ID = {t: i for i, t in enumerate(EDGE_TYPES)}
MAX_POSITIONS = 512


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class GraphBatch:
    labels: torch.Tensor  # [N] label ids
    fields: torch.Tensor  # [N] field ids
    edge_index: torch.Tensor  # [2, E]
    edge_type: torch.Tensor  # [E]
    batch: torch.Tensor  # [N] graph of each node
    sizes: list[int]

    def to(self, device) -> GraphBatch:
        return GraphBatch(*(t.to(device) for t in (self.labels, self.fields, self.edge_index, self.edge_type,
                                                   self.batch)), self.sizes)


@dataclass
class SeqBatch:
    tokens: torch.Tensor  # [B, L]
    fields: torch.Tensor  # [B, L]
    padding: torch.Tensor  # [B, L] True at padding
    node_index: torch.Tensor  # [N] flat position (b * L + t) of each graph node, graphs concatenated
    sizes: list[int]

    def to(self, device) -> SeqBatch:
        return SeqBatch(*(t.to(device) for t in (self.tokens, self.fields, self.padding, self.node_index)),
                        self.sizes)


def graph_batch(graphs: list[Asg], vocab: Vocabulary) -> GraphBatch:
    labels, fields, src, dst, types, batch = [], [], [], [], [], []
    field_id = field_index(vocab.language)
    offset = 0
    for b, g in enumerate(graphs):
        labels += [vocab.id(x) for x in g.labels]
        fields += [field_id[f] for f in g.fields]
        batch += [b] * len(g)
        for name, pairs in g.edges().items():
            for s, d in pairs:
                src.append(s + offset)
                dst.append(d + offset)
                types.append(_EDGE_ID[name])
        offset += len(g)
    return GraphBatch(torch.tensor(labels), torch.tensor(fields), torch.tensor([src, dst], dtype=torch.long),
                      torch.tensor(types, dtype=torch.long), torch.tensor(batch), [len(g) for g in graphs])


def _sequence(g: Asg, vocab: Vocabulary) -> tuple[list[int], list[int], list[int]]:
    kids = g.children()
    tokens, fields, at = [], [], [0] * len(g)
    field_id = field_index(vocab.language)
    end_id, end_field = vocab.index[END], field_id[END]
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        i, closing = stack.pop()
        if closing:
            tokens.append(end_id)
            fields.append(end_field)
            continue
        at[i] = len(tokens)
        tokens.append(vocab.id(g.labels[i]))
        fields.append(field_id[g.fields[i]])
        if kids[i]:
            stack.append((i, True))
            stack.extend((c, False) for c in reversed(kids[i]))
    return tokens, fields, at


def sequence_batch(graphs: list[Asg], vocab: Vocabulary) -> SeqBatch:
    seqs = [_sequence(g, vocab) for g in graphs]
    length = max(len(t) for t, _, _ in seqs)
    if length > MAX_POSITIONS:
        raise ValueError(f"a tree of {length} tokens is longer than the Transformer's {MAX_POSITIONS} positions")
    tokens = torch.zeros(len(seqs), length, dtype=torch.long)  # 0 is <pad>
    fields = torch.zeros(len(seqs), length, dtype=torch.long)
    padding = torch.ones(len(seqs), length, dtype=torch.bool)
    index = []
    for b, (t, f, at) in enumerate(seqs):
        tokens[b, : len(t)] = torch.tensor(t)
        fields[b, : len(f)] = torch.tensor(f)
        padding[b, : len(t)] = False
        index += [b * length + p for p in at]
    return SeqBatch(tokens, fields, padding, torch.tensor(index), [len(g) for g in graphs])


class _GatBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, edge_dim: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.conv = GATConv(hidden, hidden // heads, heads=heads, edge_dim=edge_dim, dropout=dropout)
        self.ff = nn.Sequential(nn.Linear(hidden, ff), nn.GELU(), nn.Linear(ff, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, edge_index, edge_attr):
        x = x + self.drop(self.conv(self.norm1(x), edge_index, edge_attr))
        return x + self.drop(self.ff(self.norm2(x)))


class GraphUNet(nn.Module):
    def __init__(self, vocab_size: int, hidden: int = 256, depth: int = 2, heads: int = 4, ff: int = 1024,
                 pool_ratio: float = 0.5, edge_dim: int = 32, dropout: float = 0.1,
                 n_fields: int = len(FIELDS)) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "hidden": hidden, "depth": depth, "heads": heads, "ff": ff,
                       "pool_ratio": pool_ratio, "edge_dim": edge_dim, "dropout": dropout, "n_fields": n_fields}
        self.label = nn.Embedding(vocab_size, hidden)
        self.field = nn.Embedding(n_fields, hidden)  # n_fields: len(field_index(language))
        self.edge = nn.Embedding(len(EDGE_TYPES) + 1, edge_dim)  # + the two-hop edges added before each pooling
        block = lambda: _GatBlock(hidden, heads, edge_dim, ff, dropout)  # noqa: E731
        self.down = nn.ModuleList(block() for _ in range(depth))
        self.pools = nn.ModuleList(TopKPooling(hidden, ratio=pool_ratio) for _ in range(depth))
        self.bottleneck = block()
        self.up = nn.ModuleList(block() for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def _with_two_hop(self, edge_index: torch.Tensor, edge_attr: torch.Tensor, n: int):
        ones = torch.ones(edge_index.shape[1], device=edge_index.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "sparse support is in beta" notes
            adj = torch.sparse_coo_tensor(edge_index, ones, (n, n), check_invariants=False).coalesce()
            two = torch.sparse.mm(adj, adj).coalesce().indices()
        codes = two[0] * n + two[1]
        keep = (two[0] != two[1]) & ~torch.isin(codes, edge_index[0] * n + edge_index[1])
        extra = two[:, keep]
        kind = torch.full((extra.shape[1],), len(EDGE_TYPES), dtype=torch.long, device=edge_index.device)
        return torch.cat([edge_index, extra], 1), torch.cat([edge_attr, self.edge(kind)], 0)

    def logits(self, graphs: list[Asg], vocab: Vocabulary) -> torch.Tensor:
        """Logits [total nodes, vocab] for ``graphs``, concatenated in order (on the model's device)."""
        return self(graph_batch(graphs, vocab).to(next(self.parameters()).device))

    def forward(self, b: GraphBatch) -> torch.Tensor:
        x = self.label(b.labels) + self.field(b.fields)
        edge_index, edge_attr, batch = b.edge_index, self.edge(b.edge_type), b.batch
        skips = []
        for block, pool in zip(self.down, self.pools, strict=True):
            x = block(x, edge_index, edge_attr)
            skips.append((x, edge_index, edge_attr, batch))
            # gPool keeps a fraction of the nodes; on a tree most kept nodes would lose every neighbour, so (as
            # Gao & Ji's Graph U-Net and PyG's GraphUNet do) the graph gains its two-hop edges before pooling
            edge_index, edge_attr = self._with_two_hop(edge_index, edge_attr, x.shape[0])
            x, edge_index, edge_attr, batch, perm, _ = pool(x, edge_index, edge_attr, batch)
            skips[-1] = (*skips[-1], perm)
        x = self.bottleneck(x, edge_index, edge_attr)
        for block, (res, edge_index, edge_attr, _batch, perm) in zip(self.up, reversed(skips), strict=True):
            up = torch.zeros_like(res)
            up[perm] = x
            x = block(res + up, edge_index, edge_attr)
        return self.head(self.norm(x))


class TreeTransformer(nn.Module):
    def __init__(self, vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4, ff: int = 1024,
                 dropout: float = 0.1, n_fields: int = len(FIELDS)) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "hidden": hidden, "layers": layers, "heads": heads, "ff": ff,
                       "dropout": dropout, "n_fields": n_fields}
        self.label = nn.Embedding(vocab_size, hidden)
        self.field = nn.Embedding(n_fields, hidden)
        self.position = nn.Embedding(MAX_POSITIONS, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ff, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def logits(self, graphs: list[Asg], vocab: Vocabulary) -> torch.Tensor:
        """Logits [total nodes, vocab] for ``graphs``, concatenated in order (on the model's device)."""
        return self(sequence_batch(graphs, vocab).to(next(self.parameters()).device))

    def forward(self, b: SeqBatch) -> torch.Tensor:
        positions = torch.arange(b.tokens.shape[1], device=b.tokens.device)
        x = self.label(b.tokens) + self.field(b.fields) + self.position(positions)[None]
        x = self.encoder(x, src_key_padding_mask=b.padding)
        x = self.norm(x).reshape(-1, x.shape[-1])[b.node_index]
        return self.head(x)


def transformer_matching(target_params: int, vocab_size: int, hidden: int, heads: int = 4,
                         dropout: float = 0.1, n_fields: int = len(FIELDS)) -> TreeTransformer:
    """The Transformer (``hidden`` wide) whose parameter count is closest to ``target_params``: the layer count
    that gets nearest with a 4x feed-forward, then the feed-forward width adjusted to close the gap."""
    def size(layers: int, ff: int) -> int:
        return count_parameters(TreeTransformer(vocab_size, hidden, layers, heads, ff, dropout, n_fields))

    per_layer = size(2, 4 * hidden) - size(1, 4 * hidden)
    fixed = size(1, 4 * hidden) - per_layer
    layers = max(1, round((target_params - fixed) / per_layer))
    per_ff_unit = (size(layers, 4 * hidden + 64) - size(layers, 4 * hidden)) / 64
    ff = max(hidden, int(4 * hidden + (target_params - size(layers, 4 * hidden)) / per_ff_unit))
    return TreeTransformer(vocab_size, hidden, layers, heads, ff, dropout, n_fields)
