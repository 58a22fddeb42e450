"""Resume keyed on input content, a broken model (NaN weights, non-finite output), and the bundle trust
boundary (a hostile config expression never runs on the segment path)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.resume import source_record
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.nifti import read_source_record, write_labelmap
from monaiunetseg.model.bundle import load_state_dict, read_spec

from conftest import BUNDLE_DIR
from dicom_factory import write_series
from segment_data import save_nifti, small_volume

OPTS = BatchOptions(progress=False)


@pytest.fixture(scope="module")
def flair(kaggle_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return small_volume(kaggle_dir, n_slices=4)


def _labels(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_replaced_scan_on_the_same_grid_is_redone(flair, segmenter, tmp_path: Path):
    """Point 3: the same file name and grid, another scan (copied with its old mtime, as ``cp -p`` would):
    redone, with the reason in the note; an unchanged input is kept."""
    image, affine = flair
    scan = save_nifti(image, affine, tmp_path / "in" / "scan.nii.gz")
    out = tmp_path / "out"
    (first,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    old_labels, stat = _labels(first.output), scan.stat()
    assert old_labels.any()
    (kept,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    assert kept.note.startswith("existing output kept") and kept.seconds is None

    save_nifti(np.roll(image, 60, axis=0), affine, scan)  # another scan, same grid, same name, old mtime
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (redone,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    assert redone.status == "ok" and redone.seconds is not None
    assert redone.note.startswith("input changed since the earlier output (content SHA-256 "), redone.note
    assert not np.array_equal(_labels(redone.output), old_labels)
    assert read_source_record(redone.output)["sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()

    # a labelmap of an older version (source record without a content hash) is redone too, saying why
    (case,) = discover_cases([scan])
    write_labelmap(old_labels, affine, Path(redone.output), source=source_record(case))
    (legacy,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    assert legacy.note.startswith("earlier output has no content hash"), legacy.note


def test_changed_dicom_slice_is_redone_and_renamed_files_are_not(flair, segmenter, tmp_path: Path):
    """Point 3 for DICOM: one slice's pixels changed -> redone; the same files under other names -> kept."""
    image, affine = flair
    series = write_series(image, affine, tmp_path / "in" / "study", description="AX FLAIR")
    out = tmp_path / "out"
    (first,) = run_batch([tmp_path / "in"], out, OPTS, segmenter=segmenter).results
    assert first.status == "ok"
    for i, path in enumerate(series["paths"]):
        path.rename(path.with_name(f"renamed{i}.dcm"))
    (kept,) = run_batch([tmp_path / "in"], out, OPTS, segmenter=segmenter).results
    assert kept.note.startswith("existing output kept"), kept.note
    victim = tmp_path / "in" / "study" / "renamed0.dcm"
    ds = pydicom.dcmread(victim)
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype=np.uint16)[::-1]).tobytes()  # same size, other pixels
    ds.save_as(victim)
    (redone,) = run_batch([tmp_path / "in"], out, OPTS, segmenter=segmenter).results
    assert redone.status == "ok" and redone.note.startswith("input changed since the earlier output"), redone.note


def _weights(tmp_path: Path, name: str, change) -> Path:
    state = load_state_dict(read_spec().weights()[0])
    path = tmp_path / name
    torch.save({k: change(k, v) for k, v in state.items()}, path)
    return path


def test_nan_weights_are_refused_naming_the_file(flair, tmp_path: Path, capsys):
    """Point 4: weights holding NaN would give empty labelmaps reported ok: refused before any case."""
    scan = save_nifti(*flair, tmp_path / "scan.nii.gz")
    nan = _weights(tmp_path, "nan.pt", lambda k, v: v.fill_(float("nan")) if k.endswith("model.0.conv.unit0.conv.weight") else v)
    out = tmp_path / "out"
    assert cli_main(["segment", str(scan), "-o", str(out), "--quiet", "--weights", str(nan)]) == 2
    err = capsys.readouterr().err
    assert f"{nan}: the weights hold NaN or infinite values (1 tensor(s), e.g. " in err
    assert not list(out.glob("*_seg.nii.gz")) and not (out / "report.csv").exists()


def test_non_finite_model_output_fails_the_cases_and_stops_the_batch(flair, tmp_path: Path, capsys):
    """Point 4: finite but huge weights overflow to inf/NaN logits: each case fails naming the weights, and as
    the model fails every case it runs, the batch stops (exit code 2) instead of going on."""
    huge = _weights(tmp_path, "huge.pt", lambda k, v: v * 1e20 if v.is_floating_point() and "running" not in k else v)
    image, affine = flair
    for i in range(5):
        save_nifti(np.roll(image, i, axis=0), affine, tmp_path / "in" / f"c{i}.nii.gz")
    out = tmp_path / "out"
    assert cli_main(["segment", str(tmp_path / "in"), "-o", str(out), "--quiet", "--weights", str(huge)]) == 2
    err = capsys.readouterr().err
    assert "the model gave NaN or infinite output for every case it ran" in err and "2 case(s) not run" in err
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed"] * 5
    for r in rows[:3]:
        assert r["error"] == (f"{r['input']}: segment: the network gave NaN or infinite output (weights {huge}); no "
                              "labelmap written: an empty one would look like 'nothing found'")
    assert all(": not run: the batch stopped (the network gave NaN" in r["error"] for r in rows[3:])
    assert not list(out.glob("*_seg.nii.gz"))


HOSTILE = "$__import__('os').system('touch {marker}')"


def _bundle(tmp_path: Path, edit) -> Path:
    """A copy of the shipped bundle (configs + weights) whose inference.json ``edit`` changes."""
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR / "configs", root / "configs")
    shutil.copytree(BUNDLE_DIR / "models", root / "models")
    config = json.loads((root / "configs" / "inference.json").read_text())
    edit(config)
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    return root


def test_config_expressions_of_a_bundle_never_run_on_the_segment_path(flair, tmp_path: Path):
    """Point 5: an expression where the predictor reads (network_def) is refused; expressions elsewhere (for the
    monai.bundle commands) are never evaluated; a bundle from outside the installation gets a one-line warning,
    whether given by --bundle or $MONAIUNETSEG_BUNDLE."""
    scan = save_nifti(*flair, tmp_path / "scan.nii.gz")
    marker = tmp_path / "pwned"
    hostile = HOSTILE.format(marker=marker)
    command = [sys.executable, "-m", "monaiunetseg.cli", "segment", str(scan), "--quiet", "--device", "cpu", "-o"]

    in_network = _bundle(tmp_path / "a", lambda c: c["network_def"].update(_target_=hostile))
    proc = subprocess.run([*command, str(tmp_path / "out_a"), "--bundle", str(in_network)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "is a config expression; the predictor takes plain values only" in proc.stderr
    assert not marker.exists()

    def elsewhere(config: dict) -> None:
        config["imports"].append(hostile)
        config["predictor"]["device"] = hostile
        config["run"] = [hostile]

    bundle = _bundle(tmp_path / "b", elsewhere)
    for extra, env in [(["--bundle", str(bundle)], None), ([], {**os.environ, "MONAIUNETSEG_BUNDLE": str(bundle)})]:
        out = tmp_path / f"out_{len(extra)}"
        proc = subprocess.run([*command, str(out), *extra], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
        assert warning == [f"warning: bundle {bundle} is not the installed one; segment reads only plain values from "
                           "it, but its configs can run code when used with 'python -m monai.bundle': run those only "
                           "if you trust it"], proc.stderr
        assert not marker.exists()

    proc = subprocess.run([*command, str(tmp_path / "out_shipped")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "warning" not in proc.stderr  # the shipped bundle: no warning
    help_text = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", "segment", "--help"], capture_output=True,
                               text=True).stdout
    assert "no config expression ($...) is run" in " ".join(help_text.split())


def test_another_model_or_label_option_redoes_the_case_and_the_row_names_the_model(flair, ensemble_bundle,
                                                                                   tmp_path: Path):
    """Issue 22.5: ``--model fast`` then ``--model default`` into one -o used to keep the fast labelmap. Resume is
    keyed on the model set (weights SHA-256s) and the label-changing options (flip TTA, post-processing,
    threshold); the source record and the report row say which model made each labelmap."""
    scan = save_nifti(*flair, tmp_path / "in" / "scan.nii.gz")
    out = tmp_path / "out"

    def run(model: str, bundle: Path = ensemble_bundle):
        options = BatchOptions(progress=False, device="cpu", bundle=str(bundle), model=model)
        (res,) = run_batch([scan], out, options).results
        assert res.status == "ok", res.error
        return res

    fast = run("fast")
    assert fast.model.startswith("fast (model ") and fast.seconds is not None
    fast_labels = _labels(fast.output)
    default = run("default")
    assert default.seconds is not None and default.note.startswith(
        f"model changed since the earlier output (made by {fast.model}, now default (model "), default.note
    assert default.model.startswith("default (model ") and default.model != fast.model
    fresh = run_batch([scan], tmp_path / "fresh", BatchOptions(progress=False, device="cpu", bundle=str(ensemble_bundle)))
    assert np.array_equal(_labels(default.output), _labels(fresh.results[0].output))
    assert not np.array_equal(_labels(default.output), fast_labels)  # two members + flip TTA: another labelmap
    record = read_source_record(default.output)["model"]
    members = [ensemble_bundle / "models" / n for n in ("fold0.pt", "fold1.pt")]
    assert record["name"] == "default" and record["flip_tta"] is True
    assert record["weights_sha256"] == [hashlib.sha256(m.read_bytes()).hexdigest() for m in members]
    assert record["postprocessing"] == {"min_fraction": 0.1} and record["threshold"] == 0.5
    kept = run("default")
    assert kept.seconds is None and kept.note.startswith("existing output kept") and kept.model == default.model
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["model"] for r in rows] == [default.model]

    changed = tmp_path / "changed"  # the same weights, another post-processing: another model key
    shutil.copytree(ensemble_bundle, changed)
    config = json.loads((changed / "configs" / "inference.json").read_text())
    config["postprocessing"] = {"largest_only": True}
    (changed / "configs" / "inference.json").write_text(json.dumps(config))
    redone = run("default", changed)
    assert redone.seconds is not None and redone.note.startswith("model changed since the earlier output"), redone.note


def test_input_whose_scaling_overflows_fails_as_the_input_and_the_batch_goes_on(flair, segmenter, tmp_path: Path):
    """Issue 22.12: float32 volumes of +-3e38 overflow the intensity scaling; the network's NaN was blamed on the
    weights and, three cases in a row, stopped the batch. Now each such case fails naming the input's values, and
    the next file is segmented."""
    image, affine = flair
    huge = np.where(image > image.mean(), 3e38, -3e38).astype(np.float32)
    folder = tmp_path / "in"
    for i in range(3):
        save_nifti(np.roll(huge, i, axis=0), affine, folder / f"c{i}_huge.nii.gz", dtype=np.float32)
    good = save_nifti(image, affine, folder / "c3_good.nii.gz")
    result = run_batch([folder], tmp_path / "out", OPTS, segmenter=segmenter)
    assert result.exit_code == 1 and [r.status for r in result.results] == ["failed"] * 3 + ["ok"]
    for r in result.results[:3]:
        assert r.error.startswith(f"{r.input}: segment: the image's intensities (-3e+38 to 3e+38) are so large that "
                                  "the intensity scaling overflows"), r.error
        assert "weights" not in r.error
    assert result.results[3].input == str(good) and _labels(result.results[3].output).any()


def test_weights_zip_that_inflates_far_beyond_its_size_is_refused(flair, tmp_path: Path, capsys):
    """Issue 22.11a: a weights zip (torch's format, entries deflated) holding 256 MiB of zeros in a file of
    4 MiB was inflated on load; one declaring several GiB would fill the memory. Refused from the sizes in the
    zip's directory before any entry is read, naming the file, in both weight readers and the CLI."""
    import zipfile

    from monaiunetseg.model.state_dict import StateDictError, read_state_dict

    plain = _weights(tmp_path, "plain.pt", lambda k, v: v)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open(f"{prefix}/data/padding", "w") as fh:
            zeros = bytes(2**20)
            for _ in range(256):
                fh.write(zeros)
    assert bomb.stat().st_size < 8 * 2**20
    for load, error in ((read_state_dict, StateDictError), (load_state_dict, ValueError)):
        with pytest.raises(error, match=r"weights archive would inflate to 0\.2\d GiB from \d\.\d MiB") as err:
            load(bomb)
        assert str(bomb) in str(err.value)
    scan = save_nifti(*flair, tmp_path / "scan.nii.gz")
    assert cli_main(["segment", str(scan), "-o", str(tmp_path / "out"), "--quiet", "--weights", str(bomb)]) == 2
    assert f"{bomb}: weights archive would inflate" in capsys.readouterr().err
