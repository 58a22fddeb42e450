"""Issue 29: ``finetune`` says whether it helped and, by default, never delivers a model worse than its start.

Real training (the bundle's trainer, tiny and short, on the CPU) on real LGG FLAIR pairs (the bundled sample and
a left-right mirrored copy of it, as two cases: prepare-pairs' default gives one fold each). A learning rate of 1.0
for one epoch wrecks the weights: the fine-tuned model must score below the shipped ``default`` and be kept aside.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monaiunetseg.cli import main as cli_main
from monaiunetseg.metrics import dice
from monaiunetseg.model.bundle import read_spec
from monaiunetseg.model.predictor import Segmenter
from monaiunetseg.training.finetune import FINETUNE, SCRATCH, replay_data
from monaiunetseg.training.regularise import L2SPLoss, l2sp_loss

from conftest import BUNDLE_DIR, SAMPLE_FLAIR, SAMPLE_LABEL

SHIPPED = read_spec(BUNDLE_DIR).weights("default")[0]  # the first member of the shipped default set


def sample_pairs(folder: Path) -> Path:
    """The sample and its mirror image as two image/label pairs (one folder, ``_label`` partners)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_FLAIR, folder / "a.nii.gz")
    shutil.copy(SAMPLE_LABEL, folder / "a_label.nii.gz")
    for src, name in ((SAMPLE_FLAIR, "b.nii.gz"), (SAMPLE_LABEL, "b_label.nii.gz")):
        img = nib.load(src)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj)[::-1]), img.affine), folder / name)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    assert cli_main(["prepare-pairs", str(sample_pairs(root / "pairs")), "-o", str(root / "prepared")]) == 0
    return root / "prepared"


def test_declared_recipes_are_conservative():
    assert FINETUNE.learning_rate == 2e-4 and FINETUNE.epochs == 20 and FINETUNE.l2sp == 0.01
    assert FINETUNE.best_checkpoint and FINETUNE.members == "all" and FINETUNE.patience == 8
    assert SCRATCH.learning_rate is None and SCRATCH.l2sp == 0 and not SCRATCH.best_checkpoint


def test_a_worse_model_is_kept_aside_and_delivered_only_with_keep_worse(prepared: Path, tmp_path: Path, capsys):
    model = tmp_path / "site_model"
    args = ["finetune", str(prepared), "-o", str(model), "--from", "default", "--epochs", "1", "--learning-rate",
            "1.0", "--batch-size", "1", "--num-samples", "2", "--device", "cpu"]
    assert cli_main(args) == 3
    out = capsys.readouterr().out
    assert "WORSE than the start" in out and "not delivered" in out and "--keep-worse" in out, out
    assert not (model / "models" / "model.pt").exists() and not (model / "configs").exists()
    aside = model / "worse-than-start"
    config = json.loads((aside / "configs" / "inference.json").read_text())
    assert config["models"]["default"] == ["models/model.pt", "models/member1.pt", "models/member2.pt"]
    assert all((aside / f).is_file() for f in config["models"]["default"])  # every member of default fine-tuned
    record = json.loads((model / "train" / "finetune.json").read_text())
    verdict = record["verdict"]
    assert record["status"] == "worse" and verdict["helped"] is False
    assert verdict["start_mean"] > 0.8 > verdict["tuned_mean"] + 0.2
    log = (model / "train" / "train.log").read_text()
    assert "L2-SP: loss + 0.01 x squared distance" in log and f"pretrained: initial weights from {SHIPPED.resolve()}" in log

    # The start's Dice is the shipped default as `segment` runs it, on the validation case.
    val = [e for e in json.loads((prepared / "datalist.json").read_text())["training"] if e["fold"] == 0]
    img = nib.load(prepared / val[0]["image"])
    expected = dice(Segmenter(device="cpu").segment(np.asarray(img.dataobj, np.float32), img.affine) > 0,
                    np.asarray(nib.load(prepared / val[0]["label"]).dataobj) > 0)
    assert verdict["start"] == {val[0]["folder"]: pytest.approx(expected)}
    card = (aside / "docs" / "README.md").read_text()
    assert "helped: **no: worse than the start**" in card and "3 members" in card

    assert cli_main(args + ["--keep-worse"]) == 0  # trained already: only delivered now
    assert (model / "models" / "member2.pt").is_file() and not aside.exists()
    assert "Start on the same cases" in (model / "docs" / "README.md").read_text()
    csv_text = (model / "docs" / "validation.csv").read_text()
    assert csv_text.splitlines()[0] == "case,patient,dice,dice_raw,dice_start,dice_segment"
    assert json.loads((model / "train" / "finetune.json").read_text())["status"] == "done"


def test_learning_rate_zero_adapts_only_the_batch_norm_statistics(prepared: Path, tmp_path: Path):
    """``--learning-rate 0`` (the ``bn_stats`` candidate of the leave-one-institution-out script): the cosine
    schedule must not climb to the bundle's floor (1e-5), so every weight is the start's and only the batch-norm
    running statistics move to the site's cases; a negative rate is refused."""
    import torch

    model = tmp_path / "bn"
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "fast", "--epochs", "2", "--learning-rate",
                     "0", "--members", "first", "--batch-size", "1", "--num-samples", "2", "--device", "cpu",
                     "--keep-worse"]) == 0
    record = json.loads((model / "train" / "finetune.json").read_text())
    assert record["overrides"]["lr_scheduler#eta_min"] == "0.0" and record["overrides"]["learning_rate"] == "0.0"
    start = torch.load(read_spec(BUNDLE_DIR).weights("fast")[0], map_location="cpu", weights_only=True)
    tuned = torch.load(model / "models" / "model.pt", map_location="cpu", weights_only=True)
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and weights
    assert all(torch.equal(start[k], tuned[k]) for k in weights)
    assert any(not torch.allclose(start[k], tuned[k]) for k in stats)
    with pytest.raises(ValueError, match="must be >= 0"):
        from monaiunetseg.training.finetune import finetune

        finetune(prepared, tmp_path / "neg", source="fast", learning_rate=-1e-3, device="cpu")


def test_l2sp_penalty_pulls_toward_the_starting_weights():
    from monaiunetseg.model.bundle import load_state_dict, network_from_config

    net = network_from_config(None)
    net.load_state_dict(load_state_dict(SHIPPED))
    base = torch.nn.MSELoss()
    assert l2sp_loss(base, net, SHIPPED, 0.0) is base and l2sp_loss(base, net, None, 0.1) is base
    loss = l2sp_loss(base, net, SHIPPED, 0.5)
    assert isinstance(loss, L2SPLoss) and float(loss.penalty().detach()) == 0.0
    x, y = torch.zeros(1), torch.zeros(1)
    first = next(net.parameters())
    with torch.no_grad():
        first.add_(0.1)
    value = loss(x, y)
    assert float(value.detach()) == pytest.approx(0.5 * 0.01 * first.numel(), rel=1e-4)
    value.backward()
    torch.testing.assert_close(first.grad, torch.full_like(first, 2 * 0.5 * 0.1))  # d/dw of a(w-w0)^2 = 2a(w-w0)


def test_replay_mixes_source_volumes_into_the_training_folds_only(prepared: Path, tmp_path: Path):
    source = tmp_path / "source_prepared"
    assert cli_main(["prepare-pairs", str(sample_pairs(tmp_path / "src")), "-o", str(source), "--folds", "2"]) == 0
    data = replay_data(prepared, source, tmp_path / "work", fold=0, per_case=2)
    entries = json.loads((data / "datalist.json").read_text())["training"]
    replayed = [e for e in entries if e["patient"].startswith("replay:")]
    assert len(entries) == 4 and len(replayed) == 2  # 1 site training case x 2
    assert all(e["fold"] != 0 for e in replayed) and all(Path(e["image"]).is_file() for e in entries)
    from monaiunetseg.training.datalist import load_split

    train, val = load_split(data, 0)
    assert len(train) == 3 and [v["patient"] for v in val] == [e["patient"] for e in entries if e["fold"] == 0]


def test_train_json_keys_are_off_by_default_and_wire_l2sp_and_early_stop():
    """train.json's new keys: ``l2sp`` 0 and ``early_stop_patience`` null leave the recipe as it was; set, the
    trainer's loss is L2-SP toward ``pretrained`` and the evaluator stops the trainer after ``patience``."""
    from monai.bundle import ConfigParser
    from monai.handlers import EarlyStopHandler

    def parsed(**overrides):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE_DIR / "configs" / "train.json"))
        parser.update({"device": "cpu", **overrides})
        return parser

    off = parsed()
    assert off["l2sp"] == 0.0 and off["early_stop_patience"] is None
    assert off.get_parsed_content("validate#early_stop") is None
    assert not isinstance(off.get_parsed_content("train#trainer#loss_function"), L2SPLoss)
    on = parsed(l2sp=0.05, pretrained=str(SHIPPED), early_stop_patience=3)
    loss = on.get_parsed_content("train#trainer#loss_function")
    assert isinstance(loss, L2SPLoss) and loss.weight == 0.05
    stop = on.get_parsed_content("validate#early_stop")
    assert isinstance(stop, EarlyStopHandler) and stop.patience == 3


def test_three_2d_pictures_prepare_and_finetune_with_the_defaults(tmp_path: Path):
    """2D out of the box: three tiles, no --folds (one fold each), finetune with the recipe's defaults but
    one epoch: it trains, scores start and result, and either delivers (0) or keeps the model aside (3)."""
    from test_finetune import write_tiles

    tiles = write_tiles(tmp_path / "tiles", slice(0, 128))
    for extra in sorted(tiles.glob("t384_*")):  # 3 of the 4 tiles of this strip
        extra.unlink()
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert cli_main(["prepare-pairs", str(tiles), "-o", str(prepared)]) == 0
    assert json.loads((prepared / "datalist.json").read_text())["n_folds"] == 3
    rc = cli_main(["finetune", str(prepared), "-o", str(model), "--from", "fast", "--epochs", "1", "--device", "cpu"])
    record = json.loads((model / "train" / "finetune.json").read_text())
    assert (rc, record["status"]) in ((0, "done"), (3, "worse"))
    assert set(record["verdict"]["tuned"]) == set(record["verdict"]["start"]) and len(record["verdict"]["tuned"]) == 1
    assert record["recipe"]["learning_rate"] == 2e-4 and record["recipe"]["l2sp"] == 0.01
    assert ((model if rc == 0 else model / "worse-than-start") / "models" / "model.pt").is_file()


def test_early_stop_ends_training_and_the_best_epoch_is_delivered(tmp_path: Path):
    """--patience 1: the trainer stops at the first epoch whose validation Dice is not better than the best one
    (a learning rate of 1e-12 leaves only the batch-norm statistics moving, so that comes within a few epochs); the
    final weights still get written, and the delivered model is the best epoch's checkpoint."""
    from test_finetune import write_tiles

    tiles = write_tiles(tmp_path / "tiles", slice(0, 128))
    for extra in sorted(tiles.glob("t384_*")):
        extra.unlink()
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert cli_main(["prepare-pairs", str(tiles), "-o", str(prepared)]) == 0
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "fast", "--epochs", "10", "--patience",
                     "1", "--learning-rate", "1e-12", "--batch-size", "1", "--num-samples", "1", "--device", "cpu",
                     "--keep-worse"]) == 0
    log = (model / "train" / "train.log").read_text()
    assert "EarlyStopping: Stop training" in log and "Epoch: 10/10" not in log, log[-3000:]
    best = model / "train" / "model_best_val.pt"
    assert best.is_file() and (model / "train" / "model.pt").is_file()
    assert (model / "models" / "model.pt").read_bytes() == best.read_bytes()


def test_from_scratch_takes_a_seed_and_a_normalisation_fine_tuning_keeps_its_starts(prepared: Path, tmp_path: Path):
    """``--seed`` and ``--normalisation`` (the leave-one-institution-out script's recipes over seeds): a scratch
    model records both and its folder segments with the normalisation it was trained with; fine-tuning refuses
    another normalisation than its start's, and an unknown one is refused by name."""
    from monaiunetseg.training.finetune import finetune

    model = tmp_path / "scratch"
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "none", "--epochs", "1", "--seed", "3",
                     "--normalisation", "percentile", "--batch-size", "1", "--num-samples", "2",
                     "--device", "cpu"]) == 0
    record = json.loads((model / "train" / "finetune.json").read_text())
    assert record["overrides"]["seed"] == "3" and record["overrides"]["normalisation"] == "percentile"
    assert read_spec(model).normalisation == "percentile"
    assert read_spec(BUNDLE_DIR).normalisation == "tissue"
    with pytest.raises(ValueError, match="fine-tuning keeps that"):
        finetune(prepared, tmp_path / "other", source="fast", normalisation="percentile", device="cpu")
    with pytest.raises(ValueError, match="--normalisation: normalisation must be one of"):
        finetune(prepared, tmp_path / "other", source="none", normalisation="zscore", device="cpu")
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="'l2sp': set by finetune itself"):
        finetune(prepared, tmp_path / "other", source="none", bundle_overrides={"l2sp": 0.5}, device="cpu")
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="was trained with --seed 3"):
        finetune(prepared, model, source="none", epochs=1, seed=4, device="cpu")


def test_freeze_bn_keeps_the_batch_norm_statistics_of_the_start(prepared: Path, tmp_path: Path):
    """``--freeze-bn`` (candidate ``frozen_bn``): with the learning rate at 0 nothing at all may move, the
    running statistics included (without it they move: the test above); train.json's key is off by default."""
    model = tmp_path / "frozen"
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "fast", "--epochs", "2", "--learning-rate",
                     "0", "--freeze-bn", "--members", "first", "--batch-size", "1", "--num-samples", "2",
                     "--device", "cpu", "--keep-worse"]) == 0
    record = json.loads((model / "train" / "finetune.json").read_text())
    assert record["recipe"]["freeze_bn"] is True and "batch-norm statistics frozen" in record["recipe_text"]
    assert "freeze_bn: " in (model / "train" / "train.log").read_text()
    start = torch.load(read_spec(BUNDLE_DIR).weights("fast")[0], map_location="cpu", weights_only=True)
    tuned = torch.load(model / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("running_mean") for k in start)
    assert all(torch.equal(start[k], tuned[k]) for k in start if not k.endswith("num_batches_tracked"))
    train = json.loads((BUNDLE_DIR / "configs" / "train.json").read_text())
    assert train["freeze_bn"] is False and FINETUNE.freeze_bn is False
