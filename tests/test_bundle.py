"""The MONAI bundle driven through its own configs (``python -m monai.bundle ...``, cwd ``monai_bundle``) on
real LGG patients: train, resume, evaluate, infer, export, verify, metadata and 2-process DDP on the CPU."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monaiunetseg.model.bundle import network_from_config
from monaiunetseg.training.datalist import load_split

from conftest import BUNDLE_DIR, REPO, SAMPLE_DIR

SCHEMA = BUNDLE_DIR / "docs" / "meta_schema_20240725.json"  # MONAI's metadata schema, committed (25.3)
TRAIN = "configs/train.json"
EVALUATE = "['configs/train.json','configs/evaluate.json']"
MULTI_GPU = "['configs/train.json','configs/multi_gpu_train.json']"
COMMON = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf", "--device", "cpu"]
TIMEOUT = 420  # seconds per bundle command: minutes of slack over the ~10 s each takes on 2 idle cores
CSV_COLUMNS = ["patient", "label_ml", "dice", "hd95_mm", "pred_ml", "abs_vol_diff_ml",
               "dice_lcc", "hd95_mm_lcc", "pred_ml_lcc", "abs_vol_diff_ml_lcc"]
TENSOR_KEYS = {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def"}


def run_bundle(args: list[str], launcher: list[str] | None = None, timeout: int = TIMEOUT, cwd: Path = BUNDLE_DIR) -> str:
    """Run ``python [launcher] -m monai.bundle <args>`` in the bundle folder; return stdout+stderr, fail on rc != 0.

    Runs in its own session so a hung run (e.g. a DDP deadlock) is killed with all its worker processes.
    """
    cmd = [sys.executable, *(launcher or []), "-m", "monai.bundle", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    if timed_out:
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n--- output (tail) ---\n{out[-6000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(cmd)}\n--- output (tail) ---\n{out[-6000:]}"
    return out


@dataclass
class TrainRun:
    out: Path
    log: str
    files: list[str]  # relative paths under ``out`` right after the run


def train(dataset: Path, out: Path, epochs: int) -> TrainRun:
    log = run_bundle(["run", "training", "--config_file", TRAIN, *COMMON, "--dataset_dir", str(dataset),
                      "--epochs", str(epochs), "--val_interval", "1", "--output_dir", str(out), "--num_workers", "0"])
    return TrainRun(out, log, sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("checkpoint_*.pt"))


def event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"))


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in event_files(run_dir):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def load_weights_into_bundle_net(path: Path) -> torch.nn.Module:
    """The network of ``configs/inference.json`` with ``path``'s weights (strict, ``weights_only=True``)."""
    net = network_from_config(BUNDLE_DIR)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def two_val_dataset(prepared_small: Path, tmp_path_factory) -> Path:
    """``prepared_small`` re-folded: fold 0 (validation) holds two patients, fold 1 the third.

    DDP needs at least one validation volume per rank, and two rows make the per-patient CSV check meaningful.
    """
    root = tmp_path_factory.mktemp("two_val")
    for sub in ("images", "labels"):
        (root / sub).symlink_to(prepared_small / sub, target_is_directory=True)
    datalist = json.loads((prepared_small / "datalist.json").read_text())
    for i, entry in enumerate(sorted(datalist["training"], key=lambda e: e["n_slices"])):
        entry["fold"] = 0 if i < 2 else 1  # the two smallest volumes validate
    datalist["n_folds"] = 2
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root


@pytest.fixture(scope="module")
def trained(prepared_small: Path, tmp_path_factory) -> TrainRun:
    """One epoch on two real patients (folds 1-2 of ``prepared_small``), validated on the third."""
    return train(prepared_small, tmp_path_factory.mktemp("train"), epochs=1)


@pytest.fixture(scope="module")
def resumed(trained: TrainRun, prepared_small: Path, tmp_path_factory) -> TrainRun:
    """A copy of ``trained``'s output folder, rerun with ``--epochs 2`` (the original stays untouched); its
    checkpoint renamed as runs started before the shorter names wrote it, which must still resume."""
    out = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(trained.out, out)
    ckpt_dir = out / "checkpoints"
    (ckpt_dir / "checkpoint_epoch=1.pt").rename(ckpt_dir / "checkpoint_checkpoint_epoch=1.pt")
    return train(prepared_small, out, epochs=2)


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    """The bundle copied outside the repository (configs, weights, docs; no runs): it must be self-contained."""
    dst = tmp_path_factory.mktemp("elsewhere") / "lgg_flair_bundle"
    shutil.copytree(BUNDLE_DIR, dst, ignore=shutil.ignore_patterns("runs", "eval", "__pycache__", "*.ts"))
    return dst


@pytest.fixture(scope="module")
def inferred(bundle_copy: Path, tmp_path_factory) -> Path:
    """``configs/inference.json`` of a copy of the bundle outside the repository, with the shipped weights, over
    the bundled sample folder."""
    out, scans = tmp_path_factory.mktemp("inference"), tmp_path_factory.mktemp("scans")
    for src in SAMPLE_DIR.glob("*_flair.nii*"):  # the scans only, not the reference mask beside them
        shutil.copy(src, scans / src.name)
    run_bundle(["run", "inference", "--config_file", "configs/inference.json", *COMMON,
                "--input_dir", str(scans), "--output_dir", str(out)], cwd=bundle_copy)
    return out


# ----------------------------------------------------------------------------------------------- training


def test_training_one_epoch_writes_model_checkpoint_and_logs(trained: TrainRun):
    """``run training`` on real data must leave everything a user and a resume need: final weights the inference
    network loads, a resumable checkpoint, TensorBoard scalars and a validation metric in the log."""
    model = trained.out / "model.pt"
    assert model.is_file(), trained.files
    net = load_weights_into_bundle_net(model)
    assert all(torch.isfinite(p).all() for p in net.parameters())

    ckpts = checkpoints(trained.out)
    assert [c.name for c in ckpts] == ["checkpoint_epoch=1.pt"], trained.files
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(state)

    assert event_files(trained.out), trained.files
    assert {"train_loss", "val_mean_dice"} <= scalar_tags(trained.out)

    assert re.search(r"Epoch: 1/1, Iter: \d+/\d+ -- train_loss: \d", trained.log), trained.log[-3000:]
    dice = [float(v) for v in re.findall(r"val_mean_dice: ([0-9.]+)", trained.log)]
    assert dice and all(0.0 <= d <= 1.0 for d in dice), trained.log[-3000:]


def test_resume_continues_from_checkpoint(resumed: TrainRun):
    """Rerunning with more epochs in the same output folder must restore the checkpoint and train only the new
    epoch, not start over."""
    log = resumed.log
    assert re.search(r"Restored all variables from .*checkpoint_checkpoint_epoch=1\.pt", log), log[-3000:]  # old name
    assert "Epoch: 2/2, Iter" in log, log[-3000:]
    assert "Epoch: 1/2, Iter" not in log, "epoch 1 was trained again:\n" + log[-3000:]
    assert "SupervisedTrainer - INFO - Epoch[1] Complete" not in log, log[-3000:]

    last = resumed.out / "checkpoints" / "checkpoint_epoch=2.pt"  # new name from here on
    assert last.is_file(), resumed.files
    trainer = torch.load(last, map_location="cpu", weights_only=True)["trainer"]
    assert trainer["max_epochs"] == 2
    assert trainer["iteration"] == 2 * trainer["epoch_length"]  # epoch 2 done, after exactly 2 epochs of steps


@pytest.mark.parametrize(
    ("configs", "alias", "ids"),
    [
        (TRAIN, "training", ["initialize", "run"]),
        (EVALUATE, "evaluating", ["initialize", "run"]),
        ("configs/inference.json", "inference", ["initialize", "run"]),
        (MULTI_GPU, "training", ["initialize", "run", "finalize"]),
    ],
)
def test_run_ids_exist(configs: str, alias: str, ids: list[str]):
    """``monai.bundle run`` defaults to the ``run`` id and the docs name ``training``/``evaluating``/``inference``:
    both must exist, the named one an alias of ``run``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = json.loads(configs.replace("'", '"')) if configs.startswith("[") else [configs]
    parser.read_config([BUNDLE_DIR / f for f in files])
    missing = [i for i in [*ids, alias] if i not in parser]
    assert not missing, f"{configs}: missing ids {missing}"
    assert parser.get(alias) == "@run", f"{configs}: {alias} = {parser.get(alias)!r}"


# ----------------------------------------------------------------------------------------------- evaluation


def test_evaluating_writes_per_patient_metrics(trained: TrainRun, two_val_dataset: Path, tmp_path: Path):
    """``evaluate.json`` must score every validation patient on its own grid: one CSV row per patient with the
    documented columns, label volumes that match the label files, and a summary that agrees with the rows."""
    out = tmp_path / "eval"
    log = run_bundle(["run", "evaluating", "--config_file", EVALUATE, *COMMON, "--dataset_dir", str(two_val_dataset),
                      "--model_path", str(trained.out / "model.pt"), "--output_dir", str(out), "--num_workers", "0"])
    with open(out / "metrics_per_patient.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    _, val = load_split(two_val_dataset, 0)
    assert [r["patient"] for r in rows] == sorted(v["patient"] for v in val)

    for row, item in zip(rows, sorted(val, key=lambda v: v["patient"])):
        m = {k: float(v) for k, v in row.items() if k != "patient"}
        assert 0.0 <= m["dice"] <= 1.0 and 0.0 <= m["dice_lcc"] <= 1.0, row
        label = nib.load(item["label"])
        label_ml = float((np.asanyarray(label.dataobj) > 0).sum()) * float(np.prod(label.header.get_zooms()[:3])) / 1000
        assert label_ml > 0 and math.isclose(m["label_ml"], label_ml, abs_tol=1e-3), (row, label_ml)
        for s in ("", "_lcc"):
            assert math.isclose(m[f"abs_vol_diff_ml{s}"], abs(m[f"pred_ml{s}"] - m["label_ml"]), abs_tol=2e-3), row
        assert m["pred_ml_lcc"] <= m["pred_ml"] + 1e-3, row  # largest component is a subset of the prediction

    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n"] == len(rows)
    assert math.isclose(summary["dice_mean"], np.mean([float(r["dice"]) for r in rows]), abs_tol=1e-3)
    # MONAI's MeanDice on the same inverted predictions must agree with the handler's own Dice.
    val_dice = float(re.findall(r"val_mean_dice: ([0-9.]+)", log)[-1])
    assert math.isclose(val_dice, summary["dice_mean"], abs_tol=1e-3), (val_dice, summary)
    # Pictures beside the tables (on by default): a panel per patient drawn on its own FLAIR, summary, index.
    assert "no panel" not in log
    assert sorted(p.stem for p in (out / "panels").glob("*.png")) == [r["patient"] for r in rows]
    assert (out / "summary.png").is_file() and all(f'id="{r["patient"]}"' in (out / "index.html").read_text() for r in rows)


def _volume_ml(labels: np.ndarray, affine: np.ndarray) -> float:
    return float(np.count_nonzero(labels)) * abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


@pytest.mark.parametrize("model", ["default", "fast"])
def test_evaluating_scores_a_shipped_model_set_as_users_get_it(model: str, two_val_dataset: Path, tmp_path: Path):
    """``evaluating`` without ``--model_path`` scores a model set of ``configs/inference.json`` (``default`` unless
    ``--model`` says otherwise) with the bundle's post-processing: every predicted volume is the one
    ``monaiunetseg segment`` gives for that scan (the same Segmenter), and the summary and pictures say what was
    scored; the summary line is printed once."""
    from monaiunetseg.model.bundle import read_spec
    from monaiunetseg.model.postprocess import PostProcessing
    from monaiunetseg.model.predictor import Segmenter

    out = tmp_path / "eval"
    args = ["run", "evaluating", "--config_file", EVALUATE, *COMMON, "--dataset_dir", str(two_val_dataset),
            "--output_dir", str(out), "--num_workers", "0"]
    log = run_bundle(args if model == "default" else [*args, "--model", model])
    spec = read_spec(BUNDLE_DIR)
    summary = json.loads((out / "metrics_summary.json").read_text())
    pp = PostProcessing.from_dict(spec.postprocessing)
    assert not pp.is_identity
    members = spec.weights(model)
    assert summary["evaluated"].startswith(f"model set '{model}' ({len(members)} model(s): ")
    assert summary["evaluated"].endswith(f"post-processing: {pp.name}")
    assert html.escape(summary["evaluated"]) in (out / "index.html").read_text()
    assert log.count("per-patient metrics (") == 1, log[-3000:]

    with open(out / "metrics_per_patient.csv", newline="") as fh:
        rows = {r["patient"]: r for r in csv.DictReader(fh)}
    _, val = load_split(two_val_dataset, 0)
    assert sorted(rows) == sorted(v["patient"] for v in val) and len(rows) == 2
    segmenter = Segmenter(BUNDLE_DIR, device="cpu", model=model)
    for item in val:
        img = nib.load(item["image"])
        labels = segmenter.segment(img.get_fdata(dtype=np.float32), img.affine)
        assert math.isclose(float(rows[item["patient"]]["pred_ml"]), _volume_ml(labels, img.affine), abs_tol=2e-3)


# ----------------------------------------------------------------------------------------------- inference


def test_inference_output_matches_input_grid(inferred: Path):
    """A segmentation is only usable on the input's own voxel grid: same shape and affine, binary uint8."""
    inputs = sorted(SAMPLE_DIR.glob("*_flair.nii*"))
    outputs = sorted(inferred.glob("*.nii*"))
    assert [o.name for o in outputs] == [i.name.replace("_flair.nii", "_flair_seg.nii") for i in inputs]
    for src, dst in zip(inputs, outputs):
        a, b = nib.load(src), nib.load(dst)
        assert b.shape == a.shape
        assert np.allclose(b.affine, a.affine, atol=1e-4), (a.affine, b.affine)
        assert b.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(b.dataobj)).tolist()) <= {0, 1}


def test_bundle_inference_is_the_cli_path(inferred: Path, tmp_path: Path):
    """One inference path: the bundle's ``inference`` (run from a copy outside the repository) and
    ``monaiunetseg segment`` give voxel-identical labelmaps and the same report values."""
    from monaiunetseg.cli import main as cli_main

    out = tmp_path / "cli"
    assert cli_main(["segment", *map(str, sorted(SAMPLE_DIR.glob("*_flair.nii*"))), "-o", str(out), "--quiet",
                     "--device", "cpu"]) == 0
    cli_files = sorted(p.name for p in out.glob("*.nii*"))
    assert cli_files and cli_files == sorted(p.name for p in inferred.glob("*.nii*"))
    for name in cli_files:
        a, b = nib.load(out / name), nib.load(inferred / name)
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)), name
        assert np.array_equal(a.affine, b.affine), name
    rows = {name: list(csv.DictReader(open(d / "report.csv", newline=""))) for name, d in (("cli", out), ("bundle", inferred))}
    assert [r["volume_ml"] for r in rows["cli"]] == [r["volume_ml"] for r in rows["bundle"]]


def test_bundle_inference_refuses_an_empty_input_dir(bundle_copy: Path, tmp_path: Path):
    """No inputs is an error naming the folder, not a silent empty run."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
           *COMMON, "--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=bundle_copy, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert f"{tmp_path}: no NIfTI files" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- export / verify


def metadata() -> dict:
    return json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())


def input_shape(meta: dict, n: int = 16) -> tuple[int, ...]:
    """(2, C, H, W) from ``network_data_format.inputs.image`` with ``n`` substituted (``16*n`` -> 256)."""
    image = meta["network_data_format"]["inputs"]["image"]
    spatial = [int(eval(s, {"__builtins__": {}}, {"n": n})) if isinstance(s, str) else int(s) for s in image["spatial_shape"]]
    return (2, image["num_channels"], *spatial)


def test_torchscript_export_matches_eager(tmp_path: Path):
    """``ckpt_export`` must produce a TorchScript model that computes exactly what the shipped weights do."""
    ts = tmp_path / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", "models/model.pt",
                "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"])
    scripted = torch.jit.load(str(ts), map_location="cpu").eval()
    eager = load_weights_into_bundle_net(BUNDLE_DIR / "models" / "model.pt")
    x = torch.rand(input_shape(metadata()), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = eager(x), scripted(x)
    assert got.shape == want.shape == (x.shape[0], 2, *x.shape[2:])
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_verify_net_in_out():
    """The network must accept and produce what ``network_data_format`` in metadata.json promises."""
    log = run_bundle(["verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                      "--config_file", "configs/inference.json"])
    assert "verified with no error" in log, log[-3000:]


# ----------------------------------------------------------------------------------------------- configs


def test_metadata_required_fields():
    """metadata.json must carry the fields the MONAI bundle spec requires, consistent with the network."""
    meta = metadata()
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"):
        assert meta.get(key) not in (None, "", {}), f"metadata.json: {key} missing or empty"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    assert meta["version"] in meta["changelog"], "changelog has no entry for the current version"
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert re.match(r"\d+\.\d+", meta[key]), (key, meta[key])
    assert all(re.match(r"\d+\.\d+", v) for v in meta["required_packages_version"].values())
    use = meta.get("intended_use", "").lower()
    assert "research" in use and "not for clinical use" in use, meta.get("intended_use")

    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    for name, tensor in (("inputs.image", image), ("outputs.pred", pred)):
        assert TENSOR_KEYS <= set(tensor), f"{name} lacks {sorted(TENSOR_KEYS - set(tensor))}"
        assert len(tensor["channel_def"]) == tensor["num_channels"], name
        assert tensor["is_patch_data"] is False, name

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(BUNDLE_DIR / "configs" / "inference.json")
    net = parser.get("network_def")
    assert (image["num_channels"], pred["num_channels"]) == (net["in_channels"], net["out_channels"])


def test_metadata_validates_against_schema():
    """Offline check against MONAI's published metadata schema (what ``verify_metadata`` downloads), the copy
    committed in the bundle: the one ``metadata.json``'s ``schema`` URL names."""
    jsonschema = pytest.importorskip("jsonschema")
    meta = metadata()
    assert meta["schema"].rsplit("/", 1)[-1] == SCHEMA.name
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(meta)]
    assert not errors, f"{SCHEMA.name}:\n" + "\n".join(errors)


NO_NETWORK = """import socket


def _refuse(*args, **kwargs):
    raise OSError("network disabled by the test")


socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def test_verify_metadata_runs_offline_from_a_clone(tmp_path: Path):
    """The documented command, run in a copy of the bundle with the network cut off: it succeeds with the committed
    schema and creates nothing outside the copy (MONAI creates --filepath's folder and downloads when the file is
    missing)."""
    pytest.importorskip("jsonschema")
    clone = tmp_path / "clone" / "monai_bundle"
    shutil.copytree(BUNDLE_DIR, clone, ignore=shutil.ignore_patterns("models", "__pycache__", "runs", "eval"))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_NETWORK)
    home, mpl = tmp_path / "home", tmp_path / "matplotlib"  # matplotlib (imported by MONAI) caches its font list
    home.mkdir()
    mpl.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "MPLCONFIGDIR": str(mpl),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    readme = (REPO / "docs" / "bundle.md").read_text() + (BUNDLE_DIR / "docs" / "README.md").read_text()
    command = "-m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath docs/meta_schema_20240725.json"
    assert command in readme
    proc = subprocess.run([sys.executable, *command.split()], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "metadata is verified with no error." in out, out[-3000:]
    assert "skipped downloading" in out
    kept = lambda p: "__pycache__" not in p.parts and p.parts[0] != "matplotlib"  # noqa: E731
    assert [p for p in sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) if kept(p)] == \
        [p for p in before if kept(p)]

    # The network really is cut off in that process: without the file, MONAI's download fails there.
    proc = subprocess.run([sys.executable, *command.replace("docs/meta_schema", "missing/meta_schema").split()],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "network disabled by the test" in proc.stdout + proc.stderr


def _parsed_network_args(files: list[str], context: int | None = None) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([BUNDLE_DIR / "configs" / f for f in files])
    if context is not None:
        parser["context"] = context
    args = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser.get("network_def") if k != "_target_"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def test_verify_metadata_needs_jsonschema_and_the_docs_say_how_to_get_it(tmp_path: Path):
    """Without jsonschema MONAI's verify_metadata fails with an unrelated-looking TypeError: the bundle page and the model
    card must name the package and quote that error, and the quoted error must be the one MONAI really gives."""
    schema = SCHEMA
    code = ("import sys\n"
            "sys.modules['jsonschema'] = None  # not installed\n"
            "from monai.bundle import verify_metadata\n"
            f"verify_metadata(meta_file={str(BUNDLE_DIR / 'configs' / 'metadata.json')!r}, filepath={str(schema)!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    quoted = "TypeError: catching classes that do not inherit from BaseException is not allowed"
    assert proc.returncode != 0 and quoted in proc.stderr, proc.stderr[-2000:]
    for doc in (REPO / "docs" / "bundle.md", BUNDLE_DIR / "docs" / "README.md"):
        text = doc.read_text()
        assert "verify_metadata" in text and "pip install jsonschema" in text and quoted in text, doc


def test_network_def_identical_in_train_and_inference():
    """Weights trained with train.json are loaded through inference.json: one architecture, one definition
    (train.json's in_channels follows its 2.5D ``context``; inference.json states both as plain values)."""
    from monaiunetseg.model.bundle import read_spec

    spec = read_spec(BUNDLE_DIR)
    train = _parsed_network_args(["train.json"], context=spec.context)
    assert train == spec.network_args
    for context in (0, 1, 2):
        assert _parsed_network_args(["train.json"], context=context)["in_channels"] == 2 * context + 1
    multi = _parsed_network_args(["train.json", "multi_gpu_train.json"], context=spec.context)
    assert multi == train, "multi_gpu_train.json must not change network_def"


# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_process_training(two_val_dataset: Path, tmp_path: Path):
    """2-process gloo DDP through multi_gpu_train.json: both ranks must finish (no collective deadlock), and only
    rank 0 may write checkpoints, weights and TensorBoard files."""
    out, logs = tmp_path / "ddp", tmp_path / "torchrun_logs"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--log-dir", str(logs), "--tee", "3"]
    run_bundle(["run", "training", "--config_file", MULTI_GPU, *COMMON, "--dataset_dir", str(two_val_dataset),
                "--subset", "2", "--epochs", "2", "--val_interval", "1", "--output_dir", str(out),
                "--num_workers", "0"], launcher=launcher)

    rank_logs = {}
    for rank in (0, 1):
        found = list(logs.glob(f"*/attempt_0/{rank}/stdout.log"))
        assert len(found) == 1, f"rank {rank}: {found}"
        rank_logs[rank] = found[0].read_text()
    # Both ranks finished (torchrun exits 0 only then); only rank 0 logs: the other rank's log has no INFO line
    # but MONAI's own note, before any config is read, that it applies logging.conf.
    assert "Epoch[2] Complete" in rank_logs[0] and "SupervisedTrainer - INFO - Engine run finished" in rank_logs[0], \
        rank_logs[0][-3000:]
    assert "Saved checkpoint at epoch: 2" in rank_logs[0]
    info = [ln for ln in rank_logs[1].splitlines() if " - INFO - " in ln and "Setting logging properties" not in ln]
    assert not info and "Epoch[" not in rank_logs[1], rank_logs[1][-3000:]
    assert "input summary of monai.bundle.scripts" not in rank_logs[0]  # MONAI's banner is filtered (logging.conf)
    assert re.findall(r"Got new best metric of val_mean_dice: ([0-9.]+)", rank_logs[0]), rank_logs[0][-3000:]

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert [c.name for c in checkpoints(out)] == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"], files
    events = event_files(out)
    # one writer each for training and validation, as in a single-process run, all from one process (rank 0)
    assert len(events) == 2 and len({e.name.split(".")[-2] for e in events}) == 1, files
    assert sorted(p.name for p in out.glob("*.pt")) == ["model.pt", "model_best_val.pt"], files
    load_weights_into_bundle_net(out / "model.pt")  # DDP's "module." wrapper must not leak into saved weights


def test_latest_checkpoint_picks_highest_epoch_not_newest_file(tmp_path: Path) -> None:
    """Resume must follow the epoch in the name: copies and restores scramble file times (and 10 > 9 > 2), and a
    folder may hold the older ``checkpoint_checkpoint_epoch=N.pt`` names beside the current ones."""
    from monaiunetseg.training.datalist import latest_checkpoint

    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    names = ["checkpoint_checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_checkpoint_epoch=2.pt"]
    for i, name in enumerate(names):  # epoch 10 written first = oldest mtime
        path = tmp_path / name
        torch.save({"epoch": i}, path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_checkpoint_epoch=10.pt"
    torch.save({"epoch": 11}, tmp_path / "checkpoint_epoch=11.pt")
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_epoch=11.pt"  # old and new names side by side
    # a run killed while saving epoch 12 leaves it truncated (MONAI saves in place): resume from epoch 11
    full = (tmp_path / "checkpoint_epoch=11.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=12.pt").write_bytes(full[: len(full) // 2])
    (tmp_path / "checkpoint_epoch=13.pt").write_bytes(b"")
    assert Path(latest_checkpoint(tmp_path)).name == "checkpoint_epoch=11.pt"


def test_shipped_model_card_agrees_with_evaluating_rerun(kaggle_dir: Path, tmp_path: Path) -> None:
    """The committed per-patient table (docs/metrics_per_patient.csv and the model card's fold-0 history) is what
    `evaluating` gives today for that fold model 0 alone (``models/model.pt``, bundle 0.1.0-0.4.0's ``fast``, read
    with the normalisation it was trained with) without post-processing, on fold 0 of the raw shared data, prepared
    on the fly by the bundle."""
    run_bundle(["run", "evaluating", "--config_file", EVALUATE, *COMMON, "--dataset_dir", str(kaggle_dir),
                "--output_dir", str(tmp_path / "eval"), "--model_path", "models/model.pt",
                "--model_normalisation", "percentile", "--postprocessing", "{}"])
    with open(tmp_path / "eval" / "metrics_per_patient.csv") as f:
        rerun = {r["patient"]: r for r in csv.DictReader(f)}
    with open(BUNDLE_DIR / "docs" / "metrics_per_patient.csv") as f:
        committed = {r["patient"]: r for r in csv.DictReader(f)}
    assert sorted(rerun) == sorted(committed) and len(committed) == 16
    for patient, row in committed.items():
        for key in ("dice", "dice_lcc", "label_ml", "pred_ml"):
            assert math.isclose(float(rerun[patient][key]), float(row[key]), abs_tol=2e-3), (patient, key)
    card = (BUNDLE_DIR / "docs" / "README.md").read_text()
    for patient, row in committed.items():
        line = next((ln for ln in card.splitlines() if ln.startswith(f"| {patient} ")), None)
        assert line is not None, f"{patient} missing from the model card's table"
        assert f"{float(row['dice']):.3f}" in line, (patient, line)
    summary = json.loads((BUNDLE_DIR / "docs" / "metrics_summary.json").read_text())
    meta = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())
    assert math.isclose(meta["eval_metrics"]["mean_dice"], summary["dice_mean"], abs_tol=1e-4)
    assert f"{summary['dice_mean']:.3f}" in card


def test_three_channel_variant_config(prepared_small: Path) -> None:
    """configs/train_3ch.json only swaps the input: 3 channels in, the 3-channel volumes as images."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([BUNDLE_DIR / "configs" / "train.json", BUNDLE_DIR / "configs" / "train_3ch.json"])
    assert parser.get_parsed_content("network_def#in_channels") == 3
    parser["context"] = 1  # 2.5D on three sequences: 3 channels per slice of the slab
    assert parser.get_parsed_content("network_def#in_channels", lazy=False) == 9
    base = ConfigParser()
    base.read_config(BUNDLE_DIR / "configs" / "train.json")
    assert {k: v for k, v in parser["network_def"].items() if k != "in_channels"} == \
        {k: v for k, v in base["network_def"].items() if k != "in_channels"}
    parser["dataset_dir"] = str(prepared_small)
    train_items, val_items = parser.get_parsed_content("split")
    assert train_items and val_items
    for item in train_items + val_items:
        assert item["image"] == item["image_3ch"] and item["image"].endswith("_3ch.nii.gz")
