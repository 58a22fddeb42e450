"""Benchmark ``monaiunetseg segment``'s per-case path: read / preprocess / model / invert / write, peak RSS.

Runs the batch code path itself (``monaiunetseg.batch.run.segment_case``) on one volume, after one warm-up run, ``--runs`` times
per device (CPU with ``--threads`` threads; CUDA with AMP when available) and prints a markdown table of
medians. Default input: the bundled sample (256 x 256 x 38 FLAIR).

    python scripts/benchmark_inference.py [--input scan.nii.gz] [--runs 7] [--threads 2] [--cli]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))  # the core, also when not pip-installed

from monaiunetseg.batch.discover import discover_cases  # noqa: E402
from monaiunetseg.batch.naming import output_paths  # noqa: E402
from monaiunetseg.batch.run import BatchOptions, segment_case  # noqa: E402
from monaiunetseg.model.predictor import Segmenter  # noqa: E402

SAMPLE = REPO / "MONAIUNetSeg" / "Resources" / "Sample" / "TCGA_DU_A5TR_19970726_flair.nii.gz"
STAGES = ("read", "preprocess", "model", "invert", "write", "total")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(device: str, input_path: Path, runs: int, out_dir: Path) -> dict[str, float]:
    segmenter = Segmenter(device=device)
    (case,) = [c for c in discover_cases([input_path]) if c.kind == "nifti"]
    paths = output_paths(out_dir, case)
    options = BatchOptions(device=device, overwrite=True, progress=False)
    segment_case(case, paths, segmenter, options)  # warm-up: lazy imports, allocator, cuDNN autotuning
    if segmenter.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    samples = [segment_case(case, paths, segmenter, options).timings for _ in range(runs)]
    row = {k: statistics.median(s[k] for s in samples) for k in STAGES}
    n_slices = int(__import__("nibabel").load(input_path).shape[2])
    row["slices_per_s"] = n_slices / row["model"]
    row["peak_rss_mb"] = peak_rss_mb()
    if segmenter.device.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def cli_seconds(input_path: Path, out_dir: Path) -> float:
    """Wall time of one fresh ``monaiunetseg segment`` process (Python, torch and MONAI start-up included)."""
    exe = Path(sys.executable).with_name("monaiunetseg")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monaiunetseg.cli"]
    t0 = time.perf_counter()
    subprocess.run([*command, "segment", str(input_path), "-o", str(out_dir), "--overwrite", "--quiet", "--device", "cpu"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=SAMPLE)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per device (median reported; >= 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--cli", action="store_true", help="also time one whole CLI process (start-up included)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import nibabel as nib

    shape = nib.load(args.input).shape
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            rows[device] = bench(device, args.input, max(args.runs, 1), Path(tmp) / device)
        cli = cli_seconds(args.input, Path(tmp) / "cli") if args.cli else None

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {args.threads} CPU threads; "
          f"load average {load:.1f} at the end")
    print(f"Input: {args.input.name} {tuple(shape)}; median of {args.runs} runs after 1 warm-up (seconds)\n")
    print("| device | read | preprocess | model | invert | write | total | slices/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for device, r in rows.items():
        label = f"{device} (AMP)" if device == "cuda" else f"cpu ({args.threads} threads)"
        extra = f" (GPU {r['gpu_peak_mb']:.0f})" if "gpu_peak_mb" in r else ""
        print(f"| {label} | {r['read']:.3f} | {r['preprocess']:.3f} | {r['model']:.3f} | {r['invert']:.3f} | "
              f"{r['write']:.3f} | **{r['total']:.3f}** | {r['slices_per_s']:.0f} | {r['peak_rss_mb']:.0f}{extra} |")
    if cli is not None:
        print(f"\nWhole CLI process (start-up, model load, one case, report): {cli:.1f} s")


if __name__ == "__main__":
    main()
