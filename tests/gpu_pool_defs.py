"""A one-asset code location for the pool-recovery tests (tests/test_recovery.py): a step in the ``gpu`` pool
that writes its pid to ``$ASTFORGE_TEST_MARKER`` and then holds its slot for ``$ASTFORGE_TEST_HOLD_S`` seconds.
It runs under astforge's own executor, so what it shows holds for every asset of definitions.py."""

import os
import time
from pathlib import Path

import dagster as dg

import definitions


@dg.asset(pool="gpu")
def hold_gpu_slot() -> None:
    Path(os.environ["ASTFORGE_TEST_MARKER"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("ASTFORGE_TEST_HOLD_S", "0")))


defs = dg.Definitions(assets=[hold_gpu_slot], executor=definitions.defs.executor)
