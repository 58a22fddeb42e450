"""Logging of the bundle's commands under ``torchrun``: one log, rank 0's.

Every DDP process runs the same trainer and evaluator, so every process would log the same epoch lines, learning
rates and metrics; interleaved, N copies of each line only hide the one that matters. ``multi_gpu_train.json``
calls :func:`quiet_other_ranks` first thing: rank 0 (and a plain, non-distributed run) logs everything, the
other ranks only warnings and errors, which can differ per process. (A custom handler in ``logging.conf`` would
do it from the first line, but MONAI refuses non-stdlib classes there, rightly: ``fileConfig`` evaluates them.)
"""

from __future__ import annotations

import logging
import os


def process_rank() -> int:
    """This process's global rank under ``torchrun`` (its ``RANK``), 0 outside a distributed launch."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_rank0() -> bool:
    return process_rank() == 0


def quiet_other_ranks() -> None:
    """On ranks other than 0 drop INFO and below everywhere (also without ``configs/logging.conf``)."""
    if not is_rank0():
        logging.disable(logging.INFO)
