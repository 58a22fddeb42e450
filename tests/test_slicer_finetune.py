"""The Slicer loop (issue 29): correct a result, *Add to training cases*, *Fine-tune* in the background, the new model
folder becomes the *Model*, segment with it. Headless under slicer-core: the real MRML scene, the real
``monaiunetseg finetune`` child process (tiny: 1 epoch), real files; the result must equal ``segment --model-dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_slicer_mrml import _drive, headless_widget, module_logic  # noqa: F401
from MONAIUNetSegLib import finetuning, models, mrml, segmentations, training_cases  # noqa: E402

from conftest import SAMPLE_FLAIR, SAMPLE_LABEL  # noqa: E402

TINY = {"epochs": 1, "batch_size": 1, "num_samples": 2}  # finetune options: one step, seconds on a CPU


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two scans with their reference labels: the sample and its left-right mirror image (another 'patient')."""
    root = tmp_path_factory.mktemp("scans")
    out = {"sample": (SAMPLE_FLAIR, SAMPLE_LABEL)}
    pair = []
    for src, name in ((SAMPLE_FLAIR, "mirror.nii.gz"), (SAMPLE_LABEL, "mirror_ref.nii.gz")):
        img = nib.load(src)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj)[::-1]), img.affine), root / name)
        pair.append(root / name)
    out["mirror"] = tuple(pair)
    return out


def segment_and_correct(logic, scene, scan: Path, reference: Path, correct: bool = True):
    """Segment ``scan`` with the shipped 'fast' model in-process, then (as a user in the Segment Editor would)
    replace the segment with the reference label."""
    volumeNode = mrml.load_volume(scan, scene)
    result = logic.run(volumeNode, device="cpu", model="fast")
    if correct:
        labelNode = mrml.load_volume(reference, scene, labelmap=True)
        segmentations.segmentation_from_labelmap(labelNode, volumeNode, result.segmentationNode)
        scene.RemoveNode(labelNode)
    return volumeNode, result.segmentationNode


def test_add_training_case_writes_a_pair_with_provenance(module_logic, scans, tmp_path):
    scene = module_logic.slicer.mrmlScene
    logic = module_logic.MONAIUNetSegLogic()
    folder = tmp_path / "cases"
    volumeNode, segNode = segment_and_correct(logic, scene, *scans["sample"], correct=False)
    assert training_cases.result_of(volumeNode) is segNode
    first = logic.addTrainingCase(volumeNode, segNode, folder)
    assert first["edited"] is False and first["model"] == "model set 'fast'" and first["case"] == volumeNode.GetName()

    labelNode = mrml.load_volume(scans["sample"][1], scene, labelmap=True)
    segmentations.segmentation_from_labelmap(labelNode, volumeNode, segNode)  # the user's correction
    before = (folder / f"{first['case']}_label.nii.gz").read_bytes()
    second = logic.addTrainingCase(volumeNode, segNode, folder)
    assert second["edited"] is True and second["case"] == first["case"] + "_2"
    assert (folder / f"{first['case']}_label.nii.gz").read_bytes() == before  # never overwritten

    ref, img = nib.load(scans["sample"][1]), nib.load(scans["sample"][0])
    saved_label = nib.load(folder / second["label"])
    np.testing.assert_array_equal(np.asarray(saved_label.dataobj), np.asarray(ref.dataobj) > 0)
    np.testing.assert_allclose(saved_label.affine, img.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(nib.load(folder / second["image"]).dataobj), np.asarray(img.dataobj))
    sidecar = json.loads((folder / f"{second['case']}.json").read_text())
    assert sidecar == second and sidecar["foreground_voxels"] == int((np.asarray(ref.dataobj) > 0).sum())

    drawn = segmentations.segmentation_from_labelmap(labelNode, volumeNode)[0]  # not made by the module
    assert logic.addTrainingCase(volumeNode, drawn, folder)["edited"] is None
    from monaiunetseg.training.pairs import find_pairs

    assert [p.case for p in find_pairs(folder)] == [first["case"], second["case"], first["case"] + "_3"]
    for bad, message in (("", "choose a folder"), (None, "choose a folder")):
        with pytest.raises(ValueError, match=message):
            logic.addTrainingCase(volumeNode, segNode, bad)


def test_fine_tune_needs_two_cases_and_a_folder(module_logic, scans, tmp_path):
    scene = module_logic.slicer.mrmlScene
    logic = module_logic.MONAIUNetSegLogic()
    with pytest.raises(ValueError, match="choose the folder of training cases"):
        logic.startFineTune(tmp_path / "nothing", "cpu", "fast")
    volumeNode, segNode = segment_and_correct(logic, scene, *scans["sample"])
    logic.addTrainingCase(volumeNode, segNode, tmp_path / "cases")
    with pytest.raises(ValueError, match="training needs at least 2"):
        logic.startFineTune(tmp_path / "cases", "cpu", "fast")
    assert not logic.isBusy()


def test_fine_tune_reports_progress_cancels_and_resumes(module_logic, scans, tmp_path):
    """A long fine-tuning: progress moves, Cancel ends the whole process tree, Fine-tune again resumes the same
    folder from its checkpoint; another starting model starts a new folder."""
    scene = module_logic.slicer.mrmlScene
    logic = module_logic.MONAIUNetSegLogic()
    cases = tmp_path / "cases"
    for name in ("sample", "mirror"):
        logic.addTrainingCase(*segment_and_correct(logic, scene, *scans[name]), cases)
    logic.fineTuneOptions = {"epochs": 40, "batch_size": 1, "num_samples": 2}
    modelDir = Path(logic.startFineTune(cases, "cpu", "fast"))
    assert modelDir.parent == finetuning.models_folder(cases) and (modelDir / "train" / "prepared" / "datalist.json").is_file()
    deadline = time.monotonic() + 600
    while logic.fineTuneProgress() < 2 / 40 or not list((modelDir / "train" / "checkpoints").glob("*epoch=2.pt")):
        logic.pollFineTune()
        assert logic.isBusy() and time.monotonic() < deadline, "no progress"
        time.sleep(0.2)
    process = logic.training.job.monitor.process
    assert logic.cancelJobs() and not logic.isBusy()
    assert process.poll() is not None, "the finetune process still runs after Cancel"
    assert finetuning.read_record(modelDir)["status"] == "running"  # ended mid-way: resumable
    assert finetuning.plan(cases, "fast") == modelDir
    assert logic.startFineTune(cases, "cpu", "fast") == str(modelDir)  # resumes
    time.sleep(1)
    logic.cancelJobs()
    other = finetuning.plan(cases, "default")
    assert other != modelDir and other.parent == modelDir.parent


def test_loop_end_to_end_gives_the_cli_labelmap(headless_widget, module_logic, scans, tmp_path):
    """Add two corrected cases, Fine-tune (1 epoch) from the widget, the new folder becomes the Model, segment:
    the same labelmap as ``monaiunetseg segment --model-dir`` on that folder, in-process and in the background."""
    from monaiunetseg.cli import main as cli_main

    scene = module_logic.slicer.mrmlScene
    widget, p = headless_widget, headless_widget._parameterNode
    cases = tmp_path / "cases"
    p.trainingFolder, p.model, p.keepWorse = cases, "fast", True
    volumes = {}
    for name in ("sample", "mirror"):
        volumeNode, segNode = segment_and_correct(widget.logic, scene, *scans[name])
        p.inputVolume, volumes[name] = volumeNode, volumeNode
        widget.onAddTrainingCase()
    assert not widget.errors and len(list(cases.glob("*.json"))) == 2
    assert "(edited; model: model set 'fast')" in "\n".join(widget.ui.logTextEdit.lines)

    widget.logic.fineTuneOptions = dict(TINY)
    widget.onFineTune()
    assert widget.logic.isBusy() and widget.ui.cancelButton.enabled and not widget.ui.fineTuneButton.enabled
    _drive(widget, timeout=900)
    assert not widget.errors, widget.errors
    log = "\n".join(widget.ui.logTextEdit.lines)
    assert "finetune: validation Dice" in log and "fine-tuned vs" in log, log[-2000:]
    assert p.model == models.FOLDER_CHOICE and p.modelFolder.parent == finetuning.models_folder(cases)
    modelDir = p.modelFolder
    assert models.check_model_folder(modelDir) == modelDir.resolve()
    record = finetuning.read_record(modelDir)
    assert record["status"] == "done" and record["source"] == "fast" and record["verdict"]["start_mean"] is not None

    out = tmp_path / "cli"
    assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(out), "--device", "cpu", "--quiet",
                     "--model-dir", str(modelDir)]) == 0
    cli = np.asarray(nib.load(next(out.glob("*_seg.nii.gz"))).dataobj)
    choice = models.resolve(p.model, p.modelFolder)
    for in_process in (True, False):
        result = widget.logic.run(volumes["sample"], device="cpu", inProcess=in_process, timeout=600,
                                  model=choice.model, bundle=choice.bundle)
        mask = segmentations.segment_array_xyz(result.segmentationNode, result.segmentId, volumes["sample"])
        np.testing.assert_array_equal(mask, cli)
        assert result.segmentationNode.GetAttribute(training_cases.MODEL_ATTRIBUTE) == f"model folder {modelDir.resolve()}"
