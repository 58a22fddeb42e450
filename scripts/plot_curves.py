"""Plot a bundle training run's curves (train loss per epoch, validation per-volume Dice) from its TensorBoard logs.

The model card shows these curves; reading them back from the run's own event files keeps the PNG honest
(no numbers copied by hand).

    python scripts/plot_curves.py RUN_DIR [-o monai_bundle/docs/training_curves.png]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of every event file under ``run_dir``, by tag, sorted by step (later files win)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                series[tag][event.step] = event.value
    return {tag: sorted(values.items()) for tag, values in series.items()}


def epoch_means(points: list[tuple[int, float]], iterations_per_epoch: int) -> list[tuple[int, float]]:
    """Iteration-level values averaged per epoch (iteration steps are 1-based and global)."""
    groups: dict[int, list[float]] = defaultdict(list)
    for step, value in points:
        groups[(step - 1) // iterations_per_epoch + 1].append(value)
    return [(epoch, sum(v) / len(v)) for epoch, v in sorted(groups.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the bundle's --output_dir of a training run")
    parser.add_argument("-o", "--output", type=Path, default=Path("monai_bundle/docs/training_curves.png"))
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="to average the per-iteration loss per epoch (default: read from the training log)")
    args = parser.parse_args(argv)

    scalars = read_scalars(args.run_dir)
    if "train_loss" not in scalars or "val_mean_dice" not in scalars:
        parser.error(f"{args.run_dir}: no train_loss / val_mean_dice scalars in its event files")
    per_epoch = args.iterations_per_epoch or _iterations_per_epoch(args.run_dir / "train.log")
    loss = epoch_means(scalars["train_loss"], per_epoch) if per_epoch else scalars["train_loss"]
    dice = scalars["val_mean_dice"]

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(*zip(*loss), lw=1)
    ax_loss.set(xlabel="epoch" if per_epoch else "iteration", ylabel="Dice + CE loss", title="training loss")
    ax_dice.plot(*zip(*dice), marker="o", ms=3)
    ax_dice.set(xlabel="epoch", ylabel="mean per-patient Dice", title="validation (fold 0)", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    best_epoch, best = max(dice, key=lambda p: p[1])
    print(f"{args.output}: {len(loss)} loss points, {len(dice)} validations; last val Dice {dice[-1][1]:.4f} "
          f"(epoch {dice[-1][0]}), best {best:.4f} (epoch {best_epoch})")
    return 0


def _iterations_per_epoch(log: Path) -> int | None:
    """Read 'Iter: i/N' from the training log so the loss can be averaged per epoch."""
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if "Iter: " in line and "/" in line.split("Iter: ", 1)[1]:
            return int(line.split("Iter: ", 1)[1].split("/", 1)[1].split()[0])
    return None


if __name__ == "__main__":
    raise SystemExit(main())
