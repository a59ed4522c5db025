"""Language slices as Dagster partitions, read from the one registry in ``ml.languages``."""

import dagster as dg

from ml.languages import SLICES

language_slices = dg.StaticPartitionsDefinition(SLICES)
