"""Benchmark ``monaiunetseg segment``: the per-case path in-process, peak memory, and whole-process start-up.

In-process rows run the batch code path itself (``monaiunetseg.batch.run.segment_case``), each row in a fresh
process (so that its peak RSS is its own), after one warm-up run, ``--runs`` times: medians of read /
preprocess / model / invert / verdict (the input checks and confidence, ``trust``) / write / total, slices per second and the process's peak RSS. Rows:

* the bundled sample (256 x 256 x 38 FLAIR) with each model set of the shipped bundle (``default``, ``fast``,
  ``full``), and with stand-ins of a single model and of a 5-member ensemble (5 copies of ``models/model.pt``),
  ONNX Runtime and eager torch;
* a 512 x 512 x 200 int16 volume (the sample upsampled in-plane and repeated), for the memory target.

``--cli`` adds whole ``monaiunetseg segment one.nii.gz -o out`` processes on a 24-slice NIfTI (``/usr/bin/time``
wall and max RSS, median of ``--cli-runs``), the time from process start to the model being ready, and the
biggest imports of the ``segment`` command (``python -X importtime``).

    python scripts/benchmark_inference.py [--input scan.nii.gz] [--runs 7] [--threads 2] [--cli] [--no-big]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))  # the core, also when not pip-installed

from monaiunetseg.batch.record import cpu_name  # noqa: E402  (after the path above)
SAMPLE = REPO / "MONAIUNetSeg" / "Resources" / "Sample" / "TCGA_DU_A5TR_19970726_flair.nii.gz"
STAGES = ("read", "preprocess", "model", "invert", "assess", "write", "total")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "MONAIUNetSeg"), os.environ.get("PYTHONPATH", "")])}


# ----------------------------------------------------------------------------------------------- inputs


def make_bundle(tmp: Path, name: str, members: int) -> Path:
    """A copy of the shipped bundle whose ``default`` model set is ``members`` copies of ``models/model.pt``."""
    root = tmp / name
    shutil.copytree(REPO / "monai_bundle" / "configs", root / "configs")
    shutil.copytree(REPO / "monai_bundle" / "models", root / "models")
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["models"] = {"default": ["models/model.pt"] * members, "fast": ["models/model.pt"]}
    config_path.write_text(json.dumps(config, indent=4))
    return root


def make_inputs(source: Path, tmp: Path, big: bool) -> dict[str, Path]:
    import nibabel as nib
    import numpy as np

    img = nib.load(source)
    data = np.asarray(img.dataobj)
    inputs = {"sample": source, "24 slices": tmp / "one.nii.gz"}
    nib.save(nib.Nifti1Image(data[:, :, 7:31], img.affine, header=img.header), inputs["24 slices"])
    if big:  # 512 x 512 x 200 int16: each voxel split into 2 x 2 (half the spacing), slices repeated
        affine = img.affine.copy()
        for a in (0, 1):
            affine[:3, a] = img.affine[:3, a] / 2
            affine[:3, 3] -= img.affine[:3, a] / 4
        fine = np.repeat(np.repeat(data.astype(np.int16), 2, axis=0), 2, axis=1)
        reps = -(-200 // fine.shape[2])
        inputs["512x512x200"] = tmp / "big.nii.gz"
        nib.save(nib.Nifti1Image(np.tile(fine, (1, 1, reps))[:, :, :200], affine), inputs["512x512x200"])
    return inputs


# ----------------------------------------------------------------------------------------------- one row


def peak_rss_mb() -> float:
    """This process's peak RSS: Linux's VmHWM (``ru_maxrss`` would include the forking parent's), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def bench_row(spec: dict) -> dict:
    """In this (fresh) process: ``segment_case`` on one input, warm-up + ``runs`` timed runs."""
    import nibabel as nib

    from monaiunetseg.batch.discover import discover_cases
    from monaiunetseg.batch.naming import output_paths
    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.run import segment_case
    from monaiunetseg.model.predictor import Segmenter

    if spec["backend"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    segmenter = Segmenter(spec["bundle"], device=spec["device"], backend=spec["backend"], model=spec.get("model", "default"))
    load = time.perf_counter() - t0
    (case,) = [c for c in discover_cases([Path(spec["input"])]) if c.kind == "nifti"]
    paths = output_paths(Path(spec["out"]), case)
    options = BatchOptions(device=spec["device"], overwrite=True, progress=False)
    segment_case(case, paths, segmenter, options)  # warm-up: allocator, lazy imports, cuDNN autotuning
    samples, cpu = [], []
    for _ in range(spec["runs"]):
        c0 = time.process_time()  # CPU seconds of all threads: on a shared machine, the work's own cost
        samples.append(segment_case(case, paths, segmenter, options).timings)
        cpu.append(time.process_time() - c0)
    row = {k: statistics.median(s[k] for s in samples) for k in STAGES}
    row["cpu"] = statistics.median(cpu)
    row["slices_per_s"] = int(nib.load(spec["input"]).shape[2]) / row["model"]
    row["peak_rss_mb"] = peak_rss_mb()
    row["load_s"], row["members"], row["model_set"] = load, len(segmenter.weights), spec.get("model", "default")
    row["backend"] = segmenter.backend + (" (CUDA, AMP)" if segmenter.device_name != "cpu" else "")
    return row


def run_row(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise RuntimeError(f"row {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- whole processes


def timed_process(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, max RSS MB) of one process, from ``/usr/bin/time`` where present."""
    if Path("/usr/bin/time").is_file():
        proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *command], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        wall, kb = proc.stderr.strip().splitlines()[-1].split()[1:3]
        return float(wall), int(kb) / 1024
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0, float("nan")


def cli_rows(inputs: dict[str, Path], bundles: dict[str, Path], tmp: Path, runs: int) -> list[tuple[str, float, float, int]]:
    """Whole-process rows: (label, median wall s, median max RSS MB, runs)."""
    exe = Path(sys.executable).with_name("monaiunetseg")
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monaiunetseg.cli"]
    ready = ("import os, sys\nfrom monaiunetseg.batch.cli import add_segment_parser\n"
             "from monaiunetseg.model.predictor import Segmenter\nSegmenter(sys.argv[1], device='cpu')\n"
             "sys.stdout.flush()\nos._exit(0)\n")
    plans = [
        ("start-up to model ready, single model (ONNX Runtime)", [sys.executable, "-c", ready, str(bundles["single"])], {}),
        ("start-up to model ready, 5-model ensemble (ONNX Runtime)", [sys.executable, "-c", ready, str(bundles["default5"])], {}),
        ("`segment one.nii.gz` (24 slices), single model", [*cli, "segment", str(inputs["24 slices"]), "--bundle", str(bundles["single"])], {}),
        ("`segment one.nii.gz` (24 slices), 5-model ensemble", [*cli, "segment", str(inputs["24 slices"]), "--bundle", str(bundles["default5"])], {}),
        ("`segment one.nii.gz` (24 slices), single model, torch backend", [*cli, "segment", str(inputs["24 slices"]), "--bundle", str(bundles["single"])], {"MONAIUNETSEG_BACKEND": "torch"}),
    ]
    rows = []
    for label, command, extra in plans:
        n = max(1, runs // 2) if extra else runs  # the torch rows are slow: fewer
        if "segment" in command:
            command = [*command, "-o", str(tmp / "cli_out"), "--overwrite", "--quiet", "--device", "cpu"]
        samples = [timed_process(command, {**ENV, **extra}) for _ in range(n)]
        rows.append((label, statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), n))
    return rows


def import_table(top: int = 8) -> list[tuple[str, float]]:
    """The biggest top-level imports (cumulative seconds) of the ``segment`` command and the lean predictor."""
    code = "import monaiunetseg.cli, monaiunetseg.batch.cli, monaiunetseg.batch.single, monaiunetseg.model.predictor, onnxruntime"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=ENV)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if not name.startswith("  ") and name.strip() != "imported package":  # top level only
                rows.append((name.strip(), int(cumulative) / 1e6))
    total = sum(t for _, t in rows)
    return [("(all, top level)", total)] + sorted(rows, key=lambda r: -r[1])[:top]


# ----------------------------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=SAMPLE)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per row (median reported; >= 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (ONNX Runtime: one per core)")
    parser.add_argument("--cli", action="store_true", help="also time whole processes (start-up included)")
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--no-big", dest="big", action="store_false", help="skip the 512 x 512 x 200 rows")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(bench_row(json.loads(args.row))))
        return
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundles = {"single": make_bundle(tmp, "single", 1), "default5": make_bundle(tmp, "default5", 5),
                   "shipped": REPO / "monai_bundle"}
        inputs = make_inputs(args.input, tmp, args.big)
        shipped_sets = json.loads((REPO / "monai_bundle" / "configs" / "inference.json").read_text())["models"]
        plan = [("sample", "shipped", "onnx", args.runs, name) for name in shipped_sets]
        plan += [("sample", "default5", "onnx", args.runs), ("sample", "single", "onnx", args.runs),
                 ("sample", "default5", "torch", max(3, args.runs // 2)), ("sample", "single", "torch", args.runs)]
        from monaiunetseg.model.predictor import device_name

        if device_name("auto") == "cuda":  # imports torch only where an NVIDIA driver is present
            plan += [("sample", "default5", "torch-cuda", args.runs), ("sample", "single", "torch-cuda", args.runs)]
        if args.big:
            plan += [("512x512x200", "single", "onnx", 3), ("512x512x200", "default5", "onnx", 3),
                     ("512x512x200", "single", "torch", 3)]
        rows = []
        for name, bundle, backend, runs, *model_set in plan:
            device = "cuda" if backend.endswith("cuda") else "cpu"
            spec = {"input": str(inputs[name]), "bundle": str(bundles[bundle]), "backend": backend.split("-")[0], "device": device,
                    "threads": args.threads, "runs": runs, "out": str(tmp / f"out_{len(rows)}"),
                    "model": model_set[0] if model_set else "default"}
            rows.append((name, bundle, runs, run_row(spec)))
        cli = cli_rows(inputs, bundles, tmp, args.cli_runs) if args.cli else []
        imports = import_table() if args.cli else []
        shapes = {name: tuple(nib.load(p).shape) for name, p in inputs.items()}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {threads_note(args.threads)}; "
          f"load average {load:.1f} at the end")
    print(f"Inputs: {', '.join(f'{n} {s}' for n, s in shapes.items())}; in-process rows: median of the runs after "
          "1 warm-up, each row in its own process (seconds; CPU s: all threads' CPU time per case; peak RSS of that process)\n")
    print("| input | model | backend | runs | load | read | preprocess | model | invert | verdict | write | total | CPU s | slices/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, bundle, runs, r in rows:
        model = {"default5": "5 members (stand-in: 5 copies of model.pt)", "single": "single (model.pt)",
                 "shipped": f"shipped `{r['model_set']}` ({r['members']} member(s))"}[bundle]
        print(f"| {name} | {model} | {r['backend']} | {runs} | {r['load_s']:.2f} | {r['read']:.3f} | {r['preprocess']:.3f} | "
              f"{r['model']:.3f} | {r['invert']:.3f} | {r['assess']:.3f} | {r['write']:.3f} | **{r['total']:.3f}** | {r['cpu']:.2f} | {r['slices_per_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |")
    if cli:
        print("\nWhole processes (`/usr/bin/time`, CPU): median wall and max RSS\n")
        print("| process | runs | wall s | max RSS MB |")
        print("|---|---|---|---|")
        for label, wall, rss, n in cli:
            print(f"| {label} | {n} | **{wall:.2f}** | {rss:.0f} |")
        print("\n`python -X importtime` of the `segment` command's modules (cumulative s, top level)\n")
        print("| module | s |")
        print("|---|---|")
        for name, seconds in imports:
            print(f"| {name} | {seconds:.3f} |")


def threads_note(threads: int) -> str:
    try:
        import importlib.metadata as md

        return f"{md.version('torch')} ({threads} threads), onnxruntime {md.version('onnxruntime')} (1 thread per core)"
    except Exception:  # a missing package: say so rather than fail the report
        return f"({threads} threads)"


if __name__ == "__main__":
    main()
