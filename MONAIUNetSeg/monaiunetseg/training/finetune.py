"""``finetune``: train (or fine-tune) the bundle's network on a prepared data set into a self-contained model
folder that ``segment --model-dir`` runs like the shipped model sets.

The bundle's own ``configs/train.json`` trains (``monai.bundle run training``, as ``train-cv`` launches it),
with its ``pretrained`` key set to the source weights; only the project's configs are run. Rerunning the same
command resumes from the newest checkpoint in ``MODEL_DIR/train/``; a rerun with more ``--epochs`` continues
the finished run (the learning-rate schedule keeps its first length).

Fine-tuning (``--from`` anything but ``none``) follows :data:`FINETUNE`, a recipe declared before any test
patient was looked at (issue 29): a small learning rate, few epochs, L2-SP toward the starting weights, the
checkpoint with the best Dice on the validation fold, every member of an ensemble; and the result is delivered
only when it scores at least its start on the validation case(s) (``training.helped``), else it is kept aside in
``MODEL_DIR/worse-than-start/``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from monaiunetseg.files import write_text_atomic
from monaiunetseg.model.bundle import bundle_root, read_spec
from monaiunetseg.model.predictor import device_name
from monaiunetseg.training.cv import train_command
from monaiunetseg.training.prepare import DATALIST_NAME

SOURCES = ("default", "fast", "none")
RECORD = "finetune.json"
WORK = "train"  # MODEL_DIR/train: checkpoints, train.log, the record; not needed to segment
WORSE = "worse-than-start"  # MODEL_DIR/worse-than-start: a fine-tuned model folder that scored below its start
BEST = "model_best_val.pt"  # train.json's best-validation checkpoint (validate#handlers)


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; ``None`` learning rate: the bundle's (0.002)."""

    epochs: int
    learning_rate: float | None
    l2sp: float  # weight of sum((w - w0)^2), 0: off
    patience: int | None  # epochs without a better validation Dice before stopping; None: never stops early
    best_checkpoint: bool  # validate every epoch and deliver the best epoch's weights (else the last epoch's)
    members: str  # "all" members of the starting set, or the "first"
    replay_per_case: int  # with --replay: source volumes mixed in per site training case
    freeze_bn: bool = False  # batch-norm layers in evaluation mode while training (regularise.freeze_batch_norm)

    def text(self) -> str:
        lr = "the bundle's learning rate" if self.learning_rate is None else f"learning rate {self.learning_rate:g}"
        parts = [lr] + ([f"L2-SP {self.l2sp:g}"] if self.l2sp else []) + (
            [f"best validation epoch (early stop after {self.patience})" if self.patience else "best validation epoch"]
            if self.best_checkpoint else []) + (["batch-norm statistics frozen"] if self.freeze_bn else [])
        return ", ".join(parts)


# Declared before any test-patient look (issue 29); the leave-one-institution-out script runs these and the
# candidates in scripts/leave_one_institution_out.py, and the rule "never below the start" guards each run.
FINETUNE = Recipe(epochs=20, learning_rate=2e-4, l2sp=0.01, patience=8, best_checkpoint=True, members="all",
                  replay_per_case=2)
SCRATCH = Recipe(epochs=50, learning_rate=None, l2sp=0.0, patience=None, best_checkpoint=False, members="first",
                 replay_per_case=2)


def default_recipe(source: str) -> Recipe:
    return SCRATCH if source == "none" else FINETUNE


def source_members(source: str) -> list[Path]:
    """Every weights file of the starting model: a shipped model set's members, a model folder's default set (one
    ``finetune`` wrote, or any bundle), a weights file; empty for ``none``."""
    from monaiunetseg.training.helped import is_model_folder

    if source == "none":
        return []
    if source in SOURCES or source == "full":
        return [p.resolve() for p in read_spec(None).weights(source)]
    if is_model_folder(source):
        return [p.resolve() for p in read_spec(source).weights("default")]
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--from {source!r}: use default, fast, none, a model folder or a weights file")
    from monaiunetseg.training.initial_weights import check_initial_weights

    check_initial_weights(path, read_spec(None).network_args)
    return [path.resolve()]


def source_weights(source: str) -> Path | None:
    """The weights to start from: the first member of a shipped model set, a weights file, or None."""
    members = source_members(source)
    return members[0] if members else None


def read_record(work: Path) -> dict:
    try:
        return json.loads((work / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def member_work(work: Path, k: int) -> Path:
    """Where member ``k`` trains: ``train/`` for the first (as a one-model run), ``train/member<k>/`` after."""
    return work if k == 0 else work / f"member{k}"


def replay_data(prepared: Path, replay: Path, work: Path, fold: int, per_case: int, seed: int = 0) -> Path:
    """A prepared data set in ``work/data``: ``prepared``'s cases and, in its training folds only, ``per_case``
    source volumes of ``replay`` per site training case (drawn with ``seed``), all by absolute path."""
    if not (replay / DATALIST_NAME).is_file():
        raise FileNotFoundError(f"{replay}: no {DATALIST_NAME} (--replay takes a prepare-lgg or prepare-pairs output)")
    site = json.loads((prepared / DATALIST_NAME).read_text())
    source = json.loads((replay / DATALIST_NAME).read_text())["training"]
    n_train = sum(e["fold"] != fold for e in site["training"])
    drawn = random.Random(seed).sample(source, min(len(source), per_case * n_train))
    train_fold = next(e["fold"] for e in site["training"] if e["fold"] != fold)

    def absolute(e: dict, root: Path, **extra) -> dict:
        keys = ("image", "label", "image_3ch")
        return {**e, **{k: str((root / e[k]).resolve()) for k in keys if k in e}, **extra}

    entries = [absolute(e, prepared) for e in site["training"]]
    entries += [absolute(e, replay, fold=train_fold, patient=f"replay:{e['patient']}") for e in drawn]
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / DATALIST_NAME, json.dumps({**site, "replay": str(replay), "training": entries}, indent=1))
    return out


def _train_member(k: int, start: Path | None, data: Path, work: Path, fold: int, recipe: Recipe, record: dict,
                  overrides: dict, log) -> bool:
    """Train member ``k`` (resumed from its newest checkpoint); True when it finished."""
    mwork = member_work(work, k)
    state = record["members"][k]
    if state.get("status") == "done" and state.get("epochs") == recipe.epochs and (mwork / "model.pt").is_file():
        return True
    mwork.mkdir(parents=True, exist_ok=True)
    member = dict(overrides)
    if start is not None:
        member["pretrained"] = str(start)
    cmd = train_command(bundle_root(None).resolve(), data, mwork, fold, recipe.epochs, ["configs/train.json"],
                        {k2: str(v) for k2, v in member.items()})
    if recipe.best_checkpoint:  # validate every epoch: the best epoch on the site's case(s) is the one delivered
        cmd[cmd.index("--val_interval") + 1] = "1"
    record["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "member": k})
    state.update(status="running", epochs=recipe.epochs, start=str(start) if start else None)
    write_text_atomic(work / RECORD, json.dumps(record, indent=1))
    log(f"finetune: member {k + 1}/{len(record['members'])}: {recipe.epochs} epochs from "
        f"{start or 'scratch'} -> {mwork} (log: {mwork / 'train.log'})")
    t0 = time.perf_counter()
    with open(mwork / "train.log", "a", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    record["runs"][-1].update(seconds=round(time.perf_counter() - t0, 1), returncode=rc)
    record["train_seconds"] = round(sum(r.get("seconds") or 0.0 for r in record["runs"]), 1)
    state["status"] = "done" if rc == 0 and (mwork / "model.pt").is_file() else "interrupted"
    write_text_atomic(work / RECORD, json.dumps(record, indent=1))
    return state["status"] == "done"


def finetune(prepared: str | os.PathLike, model_dir: str | os.PathLike, source: str = "default",
             epochs: int | None = None, fold: int = 0, device: str = "auto", batch_size: int | None = None,
             num_samples: int | None = None, learning_rate: float | None = None, num_workers: int = 0,
             l2sp: float | None = None, patience: int | None = None, best_checkpoint: bool | None = None,
             members: str | None = None, replay: str | os.PathLike | None = None, keep_worse: bool = False,
             seed: int | None = None, normalisation: str | None = None, freeze_bn: bool | None = None,
             bundle_overrides: dict[str, object] | None = None, log=print) -> dict:
    """Train on every fold but ``fold`` of ``prepared`` (a prepare-pairs / prepare-lgg output), validate on
    ``fold``, and write ``model_dir`` (``model_folder.write_model_folder``) when the result is at least as good
    as its start there (or ``keep_worse``); returns the training record (``status`` ``done``, ``worse`` or
    ``interrupted``). Options left None take :func:`default_recipe`'s values; ``seed`` and ``normalisation``
    (from scratch only: fine-tuning keeps its start's) the bundle's, so a recipe can be compared over seeds;
    ``bundle_overrides``: more train.json keys for recipe experiments (recorded with the others)."""
    prepared, model_dir = Path(prepared).resolve(), Path(model_dir).resolve()
    if not (prepared / DATALIST_NAME).is_file():
        raise FileNotFoundError(f"{prepared}: no {DATALIST_NAME} (run prepare-pairs or prepare-lgg first)")
    folds = {e["fold"] for e in json.loads((prepared / DATALIST_NAME).read_text())["training"]}
    if fold not in folds or len(folds) < 2:
        raise ValueError(f"{prepared}: --fold {fold} is not one of its folds {sorted(folds)} (and training needs "
                         "another fold)")
    given = {"epochs": epochs, "learning_rate": learning_rate, "l2sp": l2sp, "patience": patience,
             "best_checkpoint": best_checkpoint, "members": members, "freeze_bn": freeze_bn}
    recipe = replace(default_recipe(source), **{k: v for k, v in given.items() if v is not None})
    if recipe.members not in ("all", "first"):
        raise ValueError(f"--members {recipe.members!r}: use all or first")
    if recipe.learning_rate is not None and recipe.learning_rate < 0:
        raise ValueError(f"--learning-rate {recipe.learning_rate:g}: must be >= 0 (0: batch-norm statistics only)")
    from monaiunetseg.training.helped import source_normalisation

    start_normalisation = source_normalisation(source)  # None from scratch: train.json's own
    if normalisation is not None:
        from monaiunetseg.model.intensity import check_normalisation

        check_normalisation(normalisation, "--normalisation")
        if source != "none" and normalisation != start_normalisation:
            raise ValueError(f"--normalisation {normalisation}: the weights of --from {source} were trained with "
                             f"{start_normalisation}; fine-tuning keeps that (choose it only with --from none)")
    work = model_dir / WORK
    record = read_record(work)
    if record and record.get("source") != source:
        raise ValueError(f"{model_dir} was started --from {record.get('source')}; resume it with that, or use "
                         "another folder")
    done = {k: (record.get("overrides") or {}).get(k) for k in ("normalisation", "seed")}
    for key, value in (("normalisation", normalisation), ("seed", seed)):
        if record and value is not None and done[key] not in (None, str(value)):
            raise ValueError(f"{model_dir} was trained with --{key} {done[key]}: resume it with that, or use "
                             "another folder")
    if record and (record.get("fold") != fold or int(record.get("epochs", 0)) > recipe.epochs):
        raise ValueError(f"{model_dir} was trained with --fold {record.get('fold')} --epochs {record.get('epochs')}: "
                         "resume it with that fold and at least as many epochs, or use another folder")
    from monaiunetseg.training.helped import is_model_folder

    if is_model_folder(source) and Path(source).resolve() == model_dir:
        raise ValueError(f"{model_dir}: the model folder to start from cannot also be the output (use another -o)")
    starts = source_members(source)
    starts = starts if recipe.members == "all" else starts[:1]
    dev = device_name(device)
    overrides: dict[str, object] = {"device": dev, "num_workers": num_workers, "l2sp": recipe.l2sp,
                                    "freeze_bn": recipe.freeze_bn}
    if normalisation or start_normalisation:
        overrides["normalisation"] = normalisation or start_normalisation
    if seed is not None:
        overrides["seed"] = seed
    for key, value in (("train#dataloader#batch_size", batch_size), ("num_samples", num_samples),
                       ("learning_rate", recipe.learning_rate), ("early_stop_patience", recipe.patience)):
        if value is not None:
            overrides[key] = value
    eta_min = json.loads((bundle_root(None) / "configs" / "train.json").read_text())["lr_scheduler"]["eta_min"]
    if recipe.learning_rate is not None and recipe.learning_rate < eta_min:
        # the cosine schedule ends at the bundle's floor: below it, it would climb above the rate asked for (with
        # 0 the weights would move after all, where only the batch-norm statistics are meant to adapt)
        overrides["lr_scheduler#eta_min"] = recipe.learning_rate
    for key, value in (bundle_overrides or {}).items():
        if key in overrides:
            raise ValueError(f"bundle override {key!r}: set by finetune itself (use its option)")
        overrides[key] = value
    work.mkdir(parents=True, exist_ok=True)
    data = replay_data(prepared, Path(replay).resolve(), work, fold, recipe.replay_per_case) if replay else prepared
    record.update(source=source, source_weights=str(starts[0]) if starts else None, prepared=str(prepared),
                  fold=fold, epochs=recipe.epochs, device=dev, recipe=asdict(recipe), recipe_text=recipe.text(),
                  replay=str(replay) if replay else None, overrides={k: str(v) for k, v in overrides.items()},
                  status="running")
    record.setdefault("runs", [])
    old = record.get("members") or []
    record["members"] = [old[k] if k < len(old) else {} for k in range(max(1, len(starts)))]
    for k in range(len(record["members"])):
        if not _train_member(k, starts[k] if starts else None, data, work, fold, recipe, record, overrides, log):
            record["status"] = "interrupted"
            write_text_atomic(work / RECORD, json.dumps(record, indent=1))
            log("finetune: training stopped; rerun the same command to resume")
            return record
    return deliver(model_dir, record, recipe, source, device, keep_worse, log)


def trained_weights(work: Path, n: int, best: bool) -> list[Path]:
    """Each member's weights to deliver: its best validation epoch (when kept) or its last."""
    out = []
    for k in range(n):
        mwork = member_work(work, k)
        out.append(mwork / BEST if best and (mwork / BEST).is_file() else mwork / "model.pt")
    return out


def deliver(model_dir: Path, record: dict, recipe: Recipe, source: str, device: str, keep_worse: bool, log) -> dict:
    """Write the candidate model folder, score it and its start on the validation fold, and move it into
    ``model_dir`` when it is at least as good (or ``keep_worse``), else into ``model_dir/worse-than-start``."""
    from monaiunetseg.model.predictor import Segmenter
    from monaiunetseg.training.helped import Verdict, score_cases, start_segmenter
    from monaiunetseg.training.model_folder import add_verdict, write_model_folder

    work, fold, prepared = model_dir / WORK, record["fold"], Path(record["prepared"])
    candidate = work / "candidate"
    shutil.rmtree(candidate, ignore_errors=True)  # ours: a previous delivery's leftover
    weights = trained_weights(work, len(record["members"]), recipe.best_checkpoint)
    summary = write_model_folder(candidate, weights, prepared, fold, source, record, device)
    dev = device_name(device)
    start = start_segmenter(source, dev)
    verdict = Verdict(score_cases(start, prepared, fold) if start is not None else None,
                      score_cases(Segmenter(bundle=candidate, device=dev), prepared, fold))
    summary = add_verdict(candidate, {**summary, "name": model_dir.name}, verdict.to_dict())
    record.update(summary=summary, verdict=verdict.to_dict(), status="done")
    log(f"finetune: {verdict.line(source)}")
    if verdict.helped is False and not keep_worse:
        aside = model_dir / WORSE
        shutil.rmtree(aside, ignore_errors=True)  # ours: an earlier refused candidate
        os.replace(candidate, aside)
        record["status"] = "worse"
        write_text_atomic(work / RECORD, json.dumps(record, indent=1))
        log(f"finetune: not delivered: the fine-tuned model is worse than its start on the validation case(s); "
            f"it is kept in {aside} (rerun with --keep-worse to deliver it anyway)")
        return record
    files = sorted((p for p in candidate.rglob("*") if p.is_file()),
                   key=lambda p: (p.relative_to(candidate).parts[0] != "models", str(p)))
    for path in files:  # each file atomically, the weights before the config that names them
        target = model_dir / path.relative_to(candidate)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(candidate, ignore_errors=True)
    shutil.rmtree(model_dir / WORSE, ignore_errors=True)
    write_text_atomic(work / RECORD, json.dumps(record, indent=1))
    log(f"finetune: {model_dir}: validation Dice {summary['dice']:.3f} on fold {fold} "
        f"({summary['n_val']} cases), post-processing: {summary['postprocessing_name']}")
    return record
