"""The Slicer loop's training: ``monaiunetseg finetune`` on a folder of training cases as a background job, like
a segmentation job (one process, its output drained, cancel ends the whole tree), into a new model folder
``<cases>-models/finetuned-<date>`` beside the cases folder (``prepare-pairs`` never writes inside its input
tree) that the *Model* selector then offers.

The pairs are prepared in-process first (``prepare-pairs``: quick, and a bad pair is refused before any process
starts) into the model folder's ``train/prepared``; a re-run resumes an unfinished fine-tuning of the same
folder from the same start, else starts a new one from the chosen model. Qt-free and Slicer-free.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from MONAIUNetSegLib.jobs import CLI_MODULE, BackgroundError, python_executable
from MONAIUNetSegLib.processes import ProcessMonitor, start_process

MODELS_SUFFIX = "-models"  # <cases>-models, beside the cases folder: the model folders its fine-tunings made
RECORD = Path("train") / "finetune.json"  # monaiunetseg.training.finetune's record (RECORD in WORK)
PREPARED = Path("train") / "prepared"
WORSE_EXIT = 3  # finetune's exit code for "worse than its start: kept aside"
EPOCH_DONE = re.compile(r"Epoch\[(\d+)\] Complete")


@dataclass
class FineTuneRequest:
    """One fine-tuning: the cases, the model folder it writes, the start (a shipped set or a model folder)."""

    casesFolder: str
    modelDir: str
    source: str
    device: str = "auto"
    keepWorse: bool = False
    options: dict = field(default_factory=dict)  # more finetune options, e.g. {"epochs": 2}
    prepared: str = ""  # the prepared pairs (default: prepared when the job starts)
    name: str = "fine-tuning"


@dataclass
class FineTuneResult:
    modelDir: str
    verdict: dict
    status: str

    def text(self) -> str:
        v = self.verdict or {}
        if v.get("start_mean") is None:
            return f"validation Dice {v.get('tuned_mean', float('nan')):.3f}"
        return f"validation Dice {v['tuned_mean']:.3f} fine-tuned vs {v['start_mean']:.3f} for the start"


def read_record(modelDir: str | Path) -> dict:
    try:
        return json.loads((Path(modelDir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def models_folder(casesFolder: str | Path) -> Path:
    """Where the fine-tunings of ``casesFolder`` go: ``<cases>-models`` beside it, outside the input tree."""
    cases = Path(casesFolder).resolve()
    return cases.parent / (cases.name + MODELS_SUFFIX)


def plan(casesFolder: str | Path, source: str) -> Path:
    """The model folder to write: an unfinished fine-tuning of these cases from ``source`` (resumed), else a new
    ``<cases>-models/finetuned-<date>``."""
    models = models_folder(casesFolder)
    unfinished = [d for d in sorted(models.glob("finetuned-*"))
                  if read_record(d).get("source") == source and read_record(d).get("status") not in ("done", "worse")]
    if unfinished:
        return unfinished[-1]
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
    target = models / f"finetuned-{stamp}"
    while target.exists():
        n += 1
        target = models / f"finetuned-{stamp}-{n}"
    return target


def prepare(casesFolder: str | Path, modelDir: str | Path) -> Path:
    """``prepare-pairs`` of the cases into ``modelDir/train/prepared`` (kept as it is when resuming: the run
    goes on with the data it started with)."""
    from monaiunetseg.training.pairs import prepare_pairs

    prepared = Path(modelDir) / PREPARED
    if not (prepared / "datalist.json").is_file():
        prepare_pairs(casesFolder, prepared)
    return prepared


def finetune_command(prepared: str | Path, request: FineTuneRequest, python: str | None = None) -> list[str]:
    """``python -m monaiunetseg.cli finetune PREPARED -o MODEL_DIR --from SOURCE --device D [--keep-worse] ...``."""
    command = [python or python_executable(), "-m", CLI_MODULE, "finetune", str(prepared), "-o", request.modelDir,
               "--from", request.source, "--device", request.device]
    command += ["--keep-worse"] if request.keepWorse else []
    for key, value in request.options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


@dataclass
class FineTuneJob:
    """The running ``finetune`` process (the interface :class:`jobs.JobQueue` drives)."""

    request: FineTuneRequest
    monitor: ProcessMonitor
    started: float = field(default_factory=time.perf_counter)

    def cleanup(self) -> None:  # the model folder is the product, and train/ is what a re-run resumes from
        pass

    def result(self, returncode: int | None) -> FineTuneResult:
        """The delivered model folder; raises :class:`jobs.BackgroundError` saying why there is none."""
        if self.monitor.cancelled:
            raise BackgroundError("cancelled (Fine-tune again to resume)")
        record = read_record(self.request.modelDir)
        if returncode == WORSE_EXIT:
            raise BackgroundError(f"the fine-tuned model scored below its start on the validation case(s) "
                                  f"({FineTuneResult('', record.get('verdict') or {}, '').text()}): not delivered; "
                                  f"kept in {Path(self.request.modelDir) / 'worse-than-start'} (tick 'Keep a "
                                  "worse model' to deliver it anyway)")
        if returncode != 0 or record.get("status") != "done":
            detail = self.monitor.tail()
            raise BackgroundError(f"fine-tuning stopped (exit code {returncode}); Fine-tune again to resume"
                                  + (f"; its last output:\n{detail}" if detail else ""))
        return FineTuneResult(self.request.modelDir, record.get("verdict") or {}, record["status"])


def start_job(request: FineTuneRequest, env: dict | None = None) -> FineTuneJob:
    prepared = request.prepared or prepare(request.casesFolder, request.modelDir)
    process = start_process(finetune_command(prepared, request), env=env, cwd=str(Path(request.modelDir).parent))
    return FineTuneJob(request, ProcessMonitor(process))


def progress(modelDir: str | Path) -> float:
    """0-1: epochs done over all members (from the record and each member's ``train.log``)."""
    record = read_record(modelDir)
    members, epochs = record.get("members") or [], int(record.get("epochs") or 0)
    if not members or not epochs:
        return 0.0
    done = 0
    for k, state in enumerate(members):
        if state.get("status") == "done":
            done += epochs
            continue
        log = Path(modelDir) / "train" / ("" if k == 0 else f"member{k}") / "train.log"
        try:
            with open(log, "rb") as fh:
                fh.seek(max(0, log.stat().st_size - 8192))
                found = EPOCH_DONE.findall(fh.read().decode("utf-8", "replace"))
        except OSError:
            found = []
        done += min(epochs, int(found[-1])) if found else 0
    return min(1.0, done / (epochs * len(members)))
