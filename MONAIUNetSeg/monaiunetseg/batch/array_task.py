"""``auto`` shard and fold numbers: this task's index in a scheduler's array, read from the environment.

A cluster runs N copies of one script (a SLURM array job, a Kubernetes indexed Job) and tells each copy which
one it is only through environment variables; ``--shard-id auto`` and ``train-cv --fold auto`` read them here,
so a job script needs no arithmetic of its own. Standard library only: ``batch.cli`` and ``training.cli`` both
use it.

- SLURM (``sbatch --array=0-N-1``): ``SLURM_ARRAY_TASK_ID`` is the index; ``SLURM_ARRAY_TASK_COUNT`` the count,
  when the array is ``0..COUNT-1`` (its ``SLURM_ARRAY_TASK_MIN``/``MAX``). A task resubmitted alone
  (``--array=1``) sees a count of 1, so a script that may be resubmitted passes the count explicitly.
- Kubernetes indexed Job: ``JOB_COMPLETION_INDEX`` is the index; the count (the Job's ``completions``) is not in
  the environment and must be given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SLURM_ID, SLURM_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
SLURM_MIN, SLURM_MAX = "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"
K8S_INDEX = "JOB_COMPLETION_INDEX"
AUTO = "auto"


class ArrayTaskError(ValueError):
    """``auto`` was asked for where no scheduler says the index or count (a command error, exit code 2)."""


def _integer(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ArrayTaskError(f"${name} is {text!r}, not a whole number") from None


def task_index(option: str, env: Mapping[str, str] | None = None) -> int:
    """This task's 0-based index: ``$SLURM_ARRAY_TASK_ID`` or ``$JOB_COMPLETION_INDEX``; ``option`` names the
    flag in the error when neither is set."""
    env = os.environ if env is None else env
    for name in (SLURM_ID, K8S_INDEX):
        value = _integer(env, name)
        if value is not None:
            if value < 0:
                raise ArrayTaskError(f"{option} auto: ${name} is {value}, below 0")
            return value
    raise ArrayTaskError(f"{option} auto: neither ${SLURM_ID} (a SLURM array job) nor ${K8S_INDEX} (a Kubernetes "
                         f"indexed Job) is set; give {option} K")


def task_count(option: str, env: Mapping[str, str] | None = None) -> int:
    """How many tasks the array has: ``$SLURM_ARRAY_TASK_COUNT`` of an array ``0..COUNT-1``."""
    env = os.environ if env is None else env
    count = _integer(env, SLURM_COUNT)
    if count is None:
        if _integer(env, K8S_INDEX) is not None:
            raise ArrayTaskError(f"{option} auto: a Kubernetes indexed Job does not tell its completions count; "
                                 f"give {option} N (the Job's completions)")
        raise ArrayTaskError(f"{option} auto: ${SLURM_COUNT} is not set (not a SLURM array job); give {option} N")
    low, high = _integer(env, SLURM_MIN), _integer(env, SLURM_MAX)
    if (low, high) != (0, count - 1) and low is not None:
        raise ArrayTaskError(f"{option} auto: the array's task IDs run {low}-{high} ({count} tasks), not 0-"
                             f"{count - 1}: submit with --array=0-{count - 1} or give {option} N (e.g. when one "
                             "task is resubmitted)")
    return count


def resolve(value: str | int, option: str, counting: bool, env: Mapping[str, str] | None = None) -> int:
    """``value`` as a number: itself, or (``auto``) the array's index (``counting``: its count)."""
    if isinstance(value, int):
        return value
    if value.strip().lower() == AUTO:
        return task_count(option, env) if counting else task_index(option, env)
    try:
        return int(value)
    except ValueError:
        raise ArrayTaskError(f"{option}: {value!r} is neither a whole number nor 'auto'") from None


def number_or_auto(text: str) -> int | str:
    """argparse ``type`` of ``--shard-id``/``--num-shards``/``--fold``: a whole number or ``auto`` (resolved by
    :func:`resolve` when the command runs, so that ``--help`` works anywhere)."""
    import argparse

    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'auto'") from None
