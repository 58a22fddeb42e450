"""The fainter-lesion training augmentation (``training.lesion_contrast``): on a real LGG slice it brings a bright
lesion down to a DU-like contrast with the tissue around it, leaves everything away from the lesion, the label and
lesion-free crops alone, and train.json wires it off by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monaiunetseg.model.intensity import normalise_channel
from monaiunetseg.training.lesion_contrast import RandLesionContrastd, surrounding_tissue
from monaiunetseg.training.lgg import read_patient

REPO = Path(__file__).resolve().parents[1]


def _contrast(image: np.ndarray, label: np.ndarray) -> float:
    return float(np.median(image[label]) / surrounding_tissue(image, label))


def _lesion_slice(kaggle_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest lesion slice of a CS patient whose lesion is bright (contrast 1.66, lesion_contrast.csv)."""
    vol = read_patient(kaggle_dir / "TCGA_CS_4944_20010208")
    flair = normalise_channel(np.ascontiguousarray(vol.flair, dtype=np.float32))
    label = np.asarray(vol.label) > 0
    z = int(np.argmax(label.sum(axis=(0, 1))))
    return torch.from_numpy(flair[None, :, :, z].copy()), torch.from_numpy(label[None, :, :, z].astype(np.float32))


def test_a_bright_lesion_becomes_a_faint_one_and_nothing_else_moves(kaggle_dir: Path) -> None:
    image, label = _lesion_slice(kaggle_dir)
    lesion = label[0].numpy() > 0
    before = _contrast(image[0].numpy(), lesion)
    assert before > 1.35  # a high-contrast lesion to start from

    aug = RandLesionContrastd(prob=1.0, keep=(0.3, 0.3))
    out = aug({"image": image.clone(), "label": label.clone()})
    after = _contrast(out["image"][0].numpy(), lesion)
    assert 1.0 < after < 1.35 and after < before - 0.2, (before, after)  # DU-like (DU median 1.22), still above tissue
    assert torch.equal(out["label"], label)

    from scipy import ndimage

    far = ~ndimage.binary_dilation(lesion, iterations=10)  # beyond 5 sigma of the smoothing
    assert np.allclose(out["image"][0].numpy()[far], image[0].numpy()[far], atol=1e-4)
    assert (out["image"] <= image + 1e-6).all()  # only brightness above the tissue is taken away


def test_lesion_free_crops_and_prob_zero_are_left_alone(kaggle_dir: Path) -> None:
    image, label = _lesion_slice(kaggle_dir)
    never = RandLesionContrastd(prob=0.0)({"image": image.clone(), "label": label.clone()})
    assert torch.equal(never["image"], image)
    empty = torch.zeros_like(label)
    free = RandLesionContrastd(prob=1.0)({"image": image.clone(), "label": empty})
    assert torch.equal(free["image"], image)
    with pytest.raises(ValueError, match="keep range"):
        RandLesionContrastd(prob=1.0, keep=(0.8, 0.2))


def test_train_json_has_the_augmentation_off_by_default() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(REPO / "monai_bundle" / "configs" / "train.json")
    assert parser.get_parsed_content("lesion_contrast_aug_prob") == 0.0
    augs = [t for t in parser.get("train#random_transforms") if t["_target_"].endswith("RandLesionContrastd")]
    assert len(augs) == 1 and augs[0]["prob"] == "@lesion_contrast_aug_prob"
    assert json.loads((REPO / "monai_bundle" / "configs" / "train.json").read_text())["lesion_contrast_aug_prob"] == 0.0


def test_the_shipped_folds_recorded_overrides_still_name_the_transforms_they_switched_off() -> None:
    """The 0.5.0 fold records switch transforms off by index (``train#random_transforms#K#prob``): a transform
    added in front of them would turn those overrides onto others on a rerun, so new ones go at the end."""
    train = json.loads((REPO / "monai_bundle" / "configs" / "train.json").read_text())
    transforms = train["train"]["random_transforms"]
    records = sorted((REPO / "monai_bundle" / "models").glob("cv_tissue_v1/fold*/cv_fold.json"))
    assert records
    for record in records:
        for key in json.loads(record.read_text())["overrides"]:
            if key.startswith("train#random_transforms#"):
                index = int(key.split("#")[2])
                assert "extra_intensity_aug_prob" in str(transforms[index]["prob"]), (record, key)
