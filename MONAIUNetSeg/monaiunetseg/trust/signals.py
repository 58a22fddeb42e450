"""Per-member prediction statistics, gathered slice chunk by slice chunk on the model grid while a volume runs.

Counts only (voxels above 0.5, voxels between 0.2 and 0.8, the probability summed over the found region, the
pairwise overlaps of the members' masks): no member's volume is kept, so memory does not grow with the
volume, and the counts do not depend on the order of the pixels (they can be taken in the ONNX graph's
sub-pixel layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNCERTAIN_BAND = (0.2, 0.8)  # a voxel the member is unsure of


@dataclass
class PredictionStats:
    """Counts over the voxels of one volume, per ensemble member (``n_members`` of them)."""

    n_members: int
    found: np.ndarray = field(init=False)  # voxels with p > 0.5
    uncertain: np.ndarray = field(init=False)  # voxels with 0.2 < p < 0.8
    prob_sum: np.ndarray = field(init=False)  # sum of p over the voxels with p > 0.5
    overlap: np.ndarray = field(init=False)  # (M, M) voxels found by both members

    def __post_init__(self) -> None:
        m = self.n_members
        self.found = np.zeros(m, np.int64)
        self.uncertain = np.zeros(m, np.int64)
        self.prob_sum = np.zeros(m, np.float64)
        self.overlap = np.zeros((m, m), np.int64)

    def update(self, members: np.ndarray) -> None:
        """Add a chunk: ``members`` is ``(N, M, ...)`` float32, each member's foreground probability."""
        p = np.asarray(members).reshape(members.shape[0], self.n_members, -1).transpose(1, 0, 2).reshape(self.n_members, -1)
        fg = p > 0.5
        lo, hi = UNCERTAIN_BAND
        self.found += fg.sum(axis=1)
        self.uncertain += ((p > lo) & (p < hi)).sum(axis=1)
        self.prob_sum += np.where(fg, p, 0.0).sum(axis=1, dtype=np.float64)
        if self.n_members > 1:
            f = fg.astype(np.float32)
            self.overlap += np.rint(f @ f.T).astype(np.int64)

    def member_features(self) -> list[dict[str, float]]:
        """Per member: ``uncertain_ratio`` (unsure voxels per found voxel) and ``mean_probability`` over the
        found region (0 when nothing is found)."""
        out = []
        for k in range(self.n_members):
            n = int(self.found[k])
            out.append({"uncertain_ratio": float(self.uncertain[k]) / max(n, 1),
                        "mean_probability": float(self.prob_sum[k]) / n if n else 0.0})
        return out

    def agreement(self) -> float | None:
        """Mean pairwise Dice of the members' masks (1.0 when both find nothing); None for one member."""
        m = self.n_members
        if m < 2:
            return None
        dices = []
        for i in range(m):
            for j in range(i + 1, m):
                total = self.found[i] + self.found[j]
                dices.append(1.0 if total == 0 else 2.0 * float(self.overlap[i, j]) / float(total))
        return float(np.mean(dices))
