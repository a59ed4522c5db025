"""The one mapping from a step's settings (an asset's ``dg.Config`` dumped to a dict, a bench's arguments) to a
trainer: the settings become the trainer's settings dataclass (``PhaseConfig``, ``DPOSettings``, ``GRPOSettings``,
whose fields carry TRL's own names), and those become TRL's config class (``SFTConfig``, ``DPOConfig``,
``GRPOConfig``) with the flags every trainer here shares. A key that is neither a field nor a setting the recipe
itself reads is refused by name, never dropped: a misspelt knob that trains with its default is a silent bug."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from ml.compute import ComputePlan
from ml.training.glue import precision_args

T = TypeVar("T")


def settings_into(cls: type[T], settings: Mapping[str, Any], *, recipe_settings: Iterable[str] = (),
                  renamed: Mapping[str, tuple[str, ...]] | None = None, **fixed: Any) -> T:
    """``cls(**settings)`` with the recipe's ``fixed`` choices on top. ``recipe_settings`` are keys the recipe reads
    itself (rows, precision); ``renamed`` maps a settings key onto one or more fields (``batch_size`` → the train and
    eval batch sizes). Any other key that is not a field of ``cls`` raises ``ValueError`` naming it and the valid
    keys."""
    known = {f.name for f in fields(cls)}
    renamed = dict(renamed or {})
    skipped = set(recipe_settings)
    unknown = sorted(k for k in settings if k not in skipped and not set(renamed.get(k, (k,))) <= known)
    if unknown:
        valid = sorted((known - {n for names in renamed.values() for n in names}) | set(renamed) | skipped)
        raise ValueError(f"unknown trainer settings {unknown} for {cls.__name__}; valid keys: {valid}")
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in skipped:
            kwargs.update(dict.fromkeys(renamed.get(key, (key,)), value))
    return cls(**{**kwargs, **fixed})


def trl_config(trl_cls: type[T], cfg: Any, plan: ComputePlan, work_dir, copied: Iterable[str],
               precision: Mapping[str, bool] | None = None, **fixed: Any) -> T:
    """TRL's ``trl_cls`` for the settings dataclass ``cfg``: the fields named in ``copied`` under their own names,
    the seed for model init and data order, precision from ``plan`` (or ``precision``), no reporting or progress bar,
    no dataloader workers, and the trainer's ``fixed`` choices. A name TRL's class does not have is refused."""
    valid = {f.name for f in fields(trl_cls)}
    copied = tuple(copied)
    unknown = sorted({*copied, *fixed} - valid)
    if unknown:
        raise ValueError(f"{trl_cls.__name__} has no fields {unknown}")
    return trl_cls(
        output_dir=str(Path(work_dir)), **{name: getattr(cfg, name) for name in copied},
        seed=cfg.seed, data_seed=cfg.seed, **dict(precision if precision is not None else precision_args(plan)),
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, **fixed,
    )
