"""Fault injection for the crash tests: a process started with ``PHIBOX_PAUSE_AT=<stage>`` prints
``paused at <stage>`` when it reaches that stage and waits there to be killed.

Stages are named where a kill -9 matters: inside an install (unpacking, unpacked, health_check,
before_swap, after_swap) and inside every write of the documents index (ingest, delete, reembed,
adopt: each paused after its first change, before the transaction commits). Unset, it costs one
environment lookup.
"""

from __future__ import annotations

import os
import time

PAUSE_ENV = "PHIBOX_PAUSE_AT"


def pause_at(stage: str) -> None:
    """Stop here for good (until killed) when the environment asks for this stage."""
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"paused at {stage}", flush=True)
        while True:
            time.sleep(3600)
