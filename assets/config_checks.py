"""Field types for the assets' ``dg.Config`` classes, so a value that makes no sense fails before any work.

Numbers carry pydantic constraints: Dagster's config schema knows only the type, so the launchpad accepts
``max_steps: -1``, and the step fails as it builds its config, before the asset body runs, with pydantic's
message naming the field (``max_steps  Input should be greater than 0``). Names are ``Literal``s: Dagster
turns them into enums, which the launchpad offers as choices and run-config validation checks before the
run starts. Where 0 means "off", "all" or "no limit", the field's comment says so and its type allows 0.
"""

from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = [
    "BpeSplit", "Dropout", "EvalFraction", "Fraction", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat",
    "PositiveInt", "SchemaView", "Seed", "TrainFraction", "TrainableEmbeddings",
]

Fraction = Annotated[float, Field(ge=0, le=1)]
# The share of the training rows set aside (validation, held out, test): 1 would leave nothing to train on.
TrainFraction = Annotated[float, Field(ge=0, lt=1)]
# The share an evaluation reads its held-out rows from: 0 would leave nothing to evaluate.
EvalFraction = Annotated[float, Field(gt=0, le=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]  # 1 would zero every activation
# numpy (and so transformers' set_seed) refuses negative seeds; random.Random would take them.
Seed = Annotated[int, Field(ge=0, lt=2**32)]

# ml/dsl/format.SCHEMA_VIEWS, ml/tokenizer.train_bpe's splits, the embedding rows that train
# (ml/training/sft_trainer.TRAINABLE_EMBEDDINGS plus "auto"; tests pin the first).
SchemaView = Literal["json", "digest"]
BpeSplit = Literal["wordpunct", "words", "whitespace"]
TrainableEmbeddings = Literal["auto", "none", "added", "all"]
