"""Training a denoiser (either model) on corrupted rows, predicting with it, and saving / loading it.

Every model (:class:`~ml.graph_repair.models.GraphUNet`, :class:`~ml.graph_repair.models.TreeTransformer`,
:class:`~ml.graph_repair.baseline.SlotFrequency`) gives its logits through its own ``logits(graphs, vocab)``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml.graph_repair.asg import Asg
from ml.graph_repair.grammar import Vocabulary
from ml.graph_repair.models import GraphUNet, TreeTransformer, field_index, transformer_matching
from ml.graph_repair.rows import graph_of

MODELS = ("graph_unet", "transformer")


@dataclass
class TrainSettings:
    steps: int = 400
    batch_size: int = 16
    lr: float = 5e-4
    warmup: float = 0.05
    clean_weight: float = 0.1  # loss weight of nodes the corruption did not touch (they are mostly copied)
    seed: int = 0
    threads: int = 0



def predict(model: nn.Module, graphs: list[Asg], vocab: Vocabulary, batch_size: int = 64) -> list[torch.Tensor]:
    """Per graph, its logits [nodes, vocab] on the CPU, in batches."""
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start:start + batch_size]
            out += model.logits(chunk, vocab).float().cpu().split([len(g) for g in chunk])
    return out


def train_denoiser(model: nn.Module, examples: Sequence[dict], vocab: Vocabulary, settings: TrainSettings,
                   log: Callable[[str], None] = print) -> dict:
    """``settings.steps`` AdamW steps of batches drawn (seeded) from ``examples``; returns the loss curve and time."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warm = max(1, int(settings.warmup * settings.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(
        math.pi * min(1.0, max(0, s - warm) / max(1, settings.steps - warm))))))
    graphs = [graph_of(e) for e in examples]
    curve, start, order = [], time.perf_counter(), []
    model.train()
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        idx, order = order[: settings.batch_size], order[settings.batch_size:]
        logits = model.logits([graphs[i] for i in idx], vocab)
        targets = torch.tensor([vocab.id(t) for i in idx for t in examples[i]["targets"]], device=logits.device)
        weights = torch.tensor([1.0 if c else settings.clean_weight for i in idx for c in examples[i]["corrupted"]],
                               device=logits.device)
        loss = (nn.functional.cross_entropy(logits, targets, reduction="none") * weights).sum() / weights.sum()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if step % max(1, settings.steps // 10) == 0 or step == settings.steps - 1:
            log(f"step {step + 1}/{settings.steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"loss_curve": curve, "train_s": time.perf_counter() - start, "final_loss": sum(curve[-10:]) / len(
        curve[-10:])}



def save_denoiser(folder: Path, kind: str, model: nn.Module, vocab: Vocabulary, priors: dict, stats: dict) -> None:
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({"kind": kind, "language": vocab.language, "config": model.config,
                                                   **stats}, indent=1))
    (folder / "vocab.json").write_text(json.dumps(vocab.labels))
    (folder / "priors.json").write_text(json.dumps([[p, f, ids] for (p, f), ids in sorted(priors.items())]))


def load_denoiser(folder: Path) -> tuple[nn.Module, Vocabulary, dict, dict]:
    """(model, vocabulary, slot priors, model.json) of a saved denoiser; ValueError when the folder is not one."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        vocab = Vocabulary(json.loads((folder / "vocab.json").read_text()), meta.get("language", "python"))
        priors = {(p, f): ids for p, f, ids in json.loads((folder / "priors.json").read_text())}
        model = GraphUNet(**meta["config"]) if meta["kind"] == "graph_unet" else TreeTransformer(**meta["config"])
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder} is not a saved graph repair model: {exc}") from exc
    return model.eval(), vocab, priors, meta


def build_model(kind: str, vocab_size: int, hidden: int, depth: int, target_params: int | None = None,
                language: str = "python") -> nn.Module:
    n_fields = len(field_index(language))
    if kind == "graph_unet":
        return GraphUNet(vocab_size, hidden=hidden, depth=depth, ff=4 * hidden, n_fields=n_fields)
    if target_params is None:
        raise ValueError("the transformer baseline is sized to the graph model: give target_params")
    return transformer_matching(target_params, vocab_size, hidden, n_fields=n_fields)

