"""Synthetic negatives: volumes that are not a head scan of the kind the model reads, for the input checks'
tests and the model card's table (``scripts/trust_negatives.py``). Each is ``(array (x, y, z) float32, RAS
affine)``; seeded, so every run measures the same volumes."""

from __future__ import annotations

import numpy as np


def _affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    return a


def _disc(shape: tuple[int, int, int], radius_vox: float, centre=(0.0, 0.0)) -> np.ndarray:
    x, y = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    cx, cy = (shape[0] - 1) / 2 + centre[0], (shape[1] - 1) / 2 + centre[1]
    return np.repeat((((x - cx) ** 2 + (y - cy) ** 2) <= radius_vox ** 2)[:, :, None], shape[2], axis=2)


def empty(shape=(256, 256, 32), spacing=(0.94, 0.94, 5.0)) -> tuple[np.ndarray, np.ndarray]:
    """All zeros (a failed export, an empty series)."""
    return np.zeros(shape, np.float32), _affine(spacing, shape)


def noise(shape=(256, 256, 38), spacing=(1.0, 1.0, 3.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform noise over the whole field of view."""
    return np.random.default_rng(seed).uniform(0, 1000, shape).astype(np.float32), _affine(spacing, shape)


def uniform_cylinder(shape=(512, 512, 32), spacing=(0.47, 0.47, 5.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A water bottle: one uniform cylinder (radius 85 mm) in air, with a little noise."""
    rng = np.random.default_rng(seed)
    v = _disc(shape, 85 / spacing[0]).astype(np.float32) * 800 + rng.normal(0, 4, shape).astype(np.float32)
    return np.abs(v), _affine(spacing, shape)


def flair_phantom(shape=(512, 512, 32), spacing=(0.47, 0.47, 5.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A structured phantom as a FLAIR would show it: a grey cylinder with darker (fluid) and brighter rods and
    a bright rim, on a black, slightly noisy background (what the model drew 17-53 mL into)."""
    rng = np.random.default_rng(seed)
    r = 95 / spacing[0]
    v = _disc(shape, r).astype(np.float32) * 500
    v[_disc(shape, r) & ~_disc(shape, r - 6 / spacing[0])] = 900
    for k, (dx, dy, value) in enumerate([(-40, -30, 120), (40, -30, 750), (-40, 30, 300), (40, 30, 1000), (0, 0, 80)]):
        v[_disc(shape, (10 + 3 * k) / spacing[0], (dx / spacing[0], dy / spacing[0]))] = value
    v += rng.normal(0, 8, shape).astype(np.float32)
    return np.abs(v), _affine(spacing, shape)


PHANTOMS = {"empty volume": empty, "noise": noise, "uniform cylinder": uniform_cylinder, "FLAIR phantom": flair_phantom}
