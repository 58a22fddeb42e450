"""The options of a batch run, in a module of their own: every step of a batch (``case``, ``resume``, ``run``,
``single``, ``cli``) takes them, and none needs to import the run to name them (the run imports those steps).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BatchOptions:
    """What ``monaiunetseg segment`` was asked to do (the flags of ``batch.cli``)."""

    device: str = "auto"
    dicom_seg: bool = False
    overwrite: bool = False
    all_series: bool = False
    overlay: bool = False
    num_shards: int = 1
    shard_id: int = 0
    bundle: str | None = None
    weights: str | None = None
    model: str = "default"  # the bundle's model set (configs/inference.json "models"): default, fast, ...
    progress: bool = True
    output_format: str = "same"  # labelmap format: same (as the input; NIfTI for DICOM), nifti, nrrd or mha
    wait: bool = False  # wait for another run holding the output folder instead of stopping
    save_probabilities: bool = False  # also write <name>_prob.*: the (averaged) foreground probability, float32
    strict: bool = False  # a case flagged for review is skipped (no outputs) instead of written with the flag
    measure: bool = False  # fill the report's measurement columns (diameters, centroid, side: measure.shape)
    include_labelmaps: bool = False  # segment files that look like label maps (*_label, few integer values) too
