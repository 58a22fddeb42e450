"""Benchmark one training step of the shipped recipe on the CPU: is anything faster than plain fp32?

Why: fine-tuning on your own data (``monaiunetseg finetune``) mostly runs on laptops and CPU servers, where
a training epoch is minutes. The network, loss, optimizer, batch shape and random transforms are read from
``monai_bundle/configs/train.json`` (what ``finetune`` and the bundle's ``training`` run), so the numbers are
for the recipe as shipped. Variants, each timed in a fresh model (median of ``--iters`` steps after
``--warmup`` steps, at most ``--budget`` seconds each):

* ``fp32``: the recipe as it is (baseline);
* ``bf16 autocast``: ``torch.autocast('cpu', dtype=torch.bfloat16)`` around forward and loss;
* ``channels_last``: network and batch in ``torch.channels_last`` memory format;
* ``torch.compile``: the network compiled (default inductor backend); the compile (first steps) timed apart;
* ``data``: the real pipeline's per-batch cost: the recipe's random transforms (crops, flips, affine,
  intensity) on the bundled sample, cached as the recipe caches it, plus collation, for one batch.

Random images and labels feed the model rows (the step time does not depend on the values); the output
table says the machine's load before and after, since the CPUs may be shared.

    python scripts/benchmark_training.py [--threads 2] [--iters 10] [--warmup 3] [--budget 120] [--skip compile]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))  # the core, also when not pip-installed

from monaiunetseg.batch.record import cpu_name  # noqa: E402  (after the path above)
TRAIN_CONFIG = REPO / "monai_bundle" / "configs" / "train.json"
SAMPLE_DIR = REPO / "MONAIUNetSeg" / "Resources" / "Sample"
SAMPLE = {"image": str(SAMPLE_DIR / "TCGA_DU_A5TR_19970726_flair.nii.gz"),
          "label": str(SAMPLE_DIR / "TCGA_DU_A5TR_19970726_label.nii.gz")}
VARIANTS = ("fp32", "bf16", "channels_last", "compile", "data")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass
class Recipe:
    """The parts of train.json a training step needs, built by MONAI's own config parser."""

    parser: object
    batch_cases: int  # DataLoader batch_size: cases per step
    samples_per_case: int  # RandCropByPosNegLabeld num_samples
    crop: tuple[int, int]
    in_channels: int
    lr: float
    weight_decay: float

    @property
    def batch_slices(self) -> int:
        return self.batch_cases * self.samples_per_case

    def network(self):
        return self.parser.get_parsed_content("network_def", instantiate=True, lazy=False)

    def loss(self):
        return self.parser.get_parsed_content("loss", instantiate=True)

    def optimizer(self, network):
        import torch

        return torch.optim.AdamW(network.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def read_recipe() -> Recipe:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    crop = parser.get_parsed_content("crop_size")
    return Recipe(parser=parser, batch_cases=int(parser["train"]["dataloader"]["batch_size"]),
                  samples_per_case=int(parser.get_parsed_content("num_samples")), crop=(int(crop[0]), int(crop[1])),
                  in_channels=int(parser.get_parsed_content("network_def#in_channels")),
                  lr=float(parser.get_parsed_content("learning_rate")),
                  weight_decay=float(parser["optimizer"]["weight_decay"]))


def random_batch(recipe: Recipe, seed: int = 0):
    """A batch of the recipe's shape: images N(0, 1), labels blobs of about a fifth of the crop."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, (h, w) = recipe.batch_slices, recipe.crop
    image = torch.randn(n, recipe.in_channels, h, w, generator=g)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(n, 1, h, w, generator=g), 15, stride=1, padding=7)
    label = (smooth > smooth.flatten(1).quantile(0.8, dim=1).view(n, 1, 1, 1)).float()
    return image, label


def time_steps(step: Callable[[], None], warmup: int, iters: int, budget: float) -> tuple[list[float], list[float]]:
    """(warm-up step times, timed step times): at most ``budget`` seconds for the timed ones (at least 3)."""
    warm = []
    for _ in range(warmup):
        t = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t)
    times, start = [], time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < budget):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return warm, times


def make_step(recipe: Recipe, variant: str):
    """A training step closure for ``variant`` on a fresh network (same initial weights for every variant)."""
    import torch

    torch.manual_seed(0)
    network = recipe.network().train()
    loss_fn, image, label = recipe.loss(), *random_batch(recipe)
    if variant == "channels_last":
        network = network.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    optimizer = recipe.optimizer(network)
    model = torch.compile(network) if variant == "compile" else network

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if variant == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(image)
                loss = loss_fn(output.float(), label)
        else:
            loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()

    return step


def data_step(recipe: Recipe):
    """One batch of the real pipeline: the recipe's random transforms on ``batch_cases`` cached copies of the
    bundled sample (the CacheDataset keeps the deterministic part), then the DataLoader's collation."""
    from monai.data import list_data_collate
    from monai.transforms import Compose

    load = Compose(recipe.parser.get_parsed_content("load_transforms"))
    random_part = Compose(recipe.parser.get_parsed_content("train#random_transforms"))
    random_part.set_random_state(seed=0)
    cached = load(dict(SAMPLE))

    def step() -> None:
        samples = [random_part(copy.copy(cached)) for _ in range(recipe.batch_cases)]
        batch = list_data_collate(samples)
        assert batch["image"].shape[0] == recipe.batch_slices, batch["image"].shape

    return step


def bf16_note() -> str:
    flags = cpu_flags()
    native = {"avx512_bf16", "amx_bf16"} & flags
    return ("native bf16 (" + ", ".join(sorted(native)) + ")") if native else "no avx512_bf16/amx: bf16 is emulated"


def run_variant(recipe: Recipe, variant: str, args) -> dict:
    row = {"variant": variant, "note": ""}
    try:
        if variant == "data":
            warm, times = time_steps(data_step(recipe), 1, args.iters, args.budget)
        else:
            t = time.perf_counter()
            step = make_step(recipe, variant)
            build = time.perf_counter() - t
            warm, times = time_steps(step, args.warmup, args.iters, args.budget)
            if variant == "compile":
                row["note"] = f"compile + first step {warm[0] + build:.0f} s"
            elif variant == "bf16":
                row["note"] = bf16_note()
    except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
        row.update(error=f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
        return row
    median = statistics.median(times)
    row.update(median_s=median, slices_per_s=recipe.batch_slices / median, n=len(times),
               spread=(max(times) - min(times)) / median)
    return row


def table(rows: list[dict], recipe: Recipe) -> str:
    base = next((r["median_s"] for r in rows if r["variant"] == "fp32" and "median_s" in r), None)
    lines = ["| variant | s / step (median) | slices/s | vs fp32 | steps timed | spread | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed | | | | | {r['error']} |")
            continue
        speed = "" if base is None or r["variant"] == "data" else f"{base / r['median_s']:.2f}x"
        note = r["note"] or ("per batch of " + str(recipe.batch_cases) + " cases, 1 worker" if r["variant"] == "data" else "")
        lines.append(f"| {r['variant']} | {r['median_s']:.3f} | {r['slices_per_s']:.1f} | {speed} | {r['n']} | "
                     f"{100 * r['spread']:.0f} % | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--iters", type=int, default=10, help="timed steps per variant (median)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of timed steps per variant, at most")
    ap.add_argument("--skip", nargs="*", default=[], choices=VARIANTS, help="variants to leave out")
    args = ap.parse_args(argv)

    import monai
    import torch

    from monaiunetseg.console import quiet_third_party

    quiet_third_party()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = read_recipe()
    load_before = os.getloadavg()
    rows = []
    for variant in (v for v in VARIANTS if v not in args.skip):
        print(f"... {variant}", file=sys.stderr, flush=True)
        rows.append(run_variant(recipe, variant, args))
    load_after = os.getloadavg()
    print(f"Training step of monai_bundle/configs/train.json on the CPU: UNet {recipe.in_channels}->2 channels "
          f"{recipe.parser['network_def']['channels']}, DiceCELoss, AdamW; batch {recipe.batch_cases} cases x "
          f"{recipe.samples_per_case} crops = {recipe.batch_slices} slices of {recipe.crop[0]} x {recipe.crop[1]}.")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; torch "
          f"{torch.__version__}, MONAI {monai.__version__}, Python {platform.python_version()}; load average "
          f"(1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}.")
    print()
    print(table(rows, recipe))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
