"""``run.json``: every ``segment`` run records what produced its results (versions, device, weights hashes, options,
times, cases with input hashes), validated against the committed schema; reruns append; no plotting code loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import monaiunetseg
from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.record import SCHEMA_PATH, RunRecord, input_sha256
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.model.bundle import read_spec

from conftest import MODULE_DIR, REPO, SAMPLE_FLAIR
from dicom_factory import write_series

jsonschema = pytest.importorskip("jsonschema")


def validated(path: Path) -> dict:
    """``path`` parsed, after checking it against the committed schema (which must itself be a valid schema)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    record = json.loads(path.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(record)]
    assert not errors, "\n".join(errors)
    return record


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_git() -> str | None:
    """HEAD of this checkout when the record module is tracked here (as the record reports it), else None."""
    record_py = MODULE_DIR / "monaiunetseg" / "batch" / "record.py"
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", str(record_py)], capture_output=True)
    if tracked.returncode:
        return None
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_segment_writes_a_run_record_and_loads_no_plotting_code(tmp_path: Path):
    """The CLI in a fresh process: run.json validates and names the shipped weights by their hash, the versions,
    the device and the case with its input hash; our plotting code was not imported on the way."""
    out = tmp_path / "out"
    code = ("import json, sys; from monaiunetseg.cli import main; "
            f"rc = main(['segment', {str(SAMPLE_FLAIR)!r}, '-o', {str(out)!r}, '--quiet', '--device', 'cpu']); "
            "print(json.dumps({'rc': rc, 'visual': [m for m in sys.modules if m.startswith('monaiunetseg.visual')]}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "visual": []}

    (run,) = validated(out / "run.json")["runs"]
    assert run["status"] == "finished" and run["command"] == "segment"
    assert datetime.fromisoformat(run["started"]) <= datetime.fromisoformat(run["finished"])
    assert run["tool"]["version"] == monaiunetseg.__version__
    assert (run["tool"]["git"] or {}).get("commit") == expected_git()
    import monai
    import torch

    assert run["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert run["versions"]["monai"] == monai.__version__
    assert run["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert run["device"]["type"] == "cpu" and run["options"]["device"] == "cpu"
    models = read_spec().weights()  # the bundle the CLI finds (in a worktree: perhaps the installed one)
    assert [(Path(w["path"]), w["sha256"], w["bytes"]) for w in run["weights"]] == \
        [(m.resolve(), sha256(m), m.stat().st_size) for m in models]
    assert run["inputs"] == [str(SAMPLE_FLAIR)] and run["counts"] == {"ok": 1}
    (case,) = run["cases"]
    assert case["input"] == str(SAMPLE_FLAIR) and case["status"] == "ok" and not case["reused"]
    assert case["input_sha256"] == sha256(SAMPLE_FLAIR)
    assert Path(case["outputs"]["output"]).is_file() and case["seconds"] > 0 and case["volume_ml"] > 0


def test_rerun_appends_and_an_unreadable_record_is_kept(segmenter, tmp_path: Path):
    out = tmp_path / "out"
    options = BatchOptions(progress=False, device="cpu")
    run_batch([SAMPLE_FLAIR], out, options, segmenter=segmenter)
    first = validated(out / "run.json")["runs"]
    run_batch([SAMPLE_FLAIR, tmp_path / "missing.nii.gz"], out, options, segmenter=segmenter)
    runs = validated(out / "run.json")["runs"]
    assert len(runs) == 2 and runs[0] == first[0]
    second = runs[1]
    cases = {c["input"]: c for c in second["cases"]}
    missing, reused = cases[str(tmp_path / "missing.nii.gz")], cases[str(SAMPLE_FLAIR)]
    assert (missing["status"], reused["status"]) == ("failed", "ok") and second["counts"] == {"failed": 1, "ok": 1}
    assert reused["reused"] and reused["seconds"] is None and reused["input_sha256"] == first[0]["cases"][0]["input_sha256"]
    assert missing["error"] and missing["input_sha256"] is None
    # Nothing was segmented: no model was used, so none is named.
    assert second["device"] == {"type": None, "name": None} and second["weights"] == []

    (out / "run.json").write_text("{ not json")
    run_batch([SAMPLE_FLAIR], out, options, segmenter=segmenter)
    (kept,) = out.glob("run.json.unreadable-*")
    assert kept.read_text() == "{ not json"
    assert len(validated(out / "run.json")["runs"]) == 1


def test_shards_and_an_unfinished_run(tmp_path: Path):
    """Shards sharing a folder keep one record each; a run recorded at its start only (killed) is ``started``."""
    out = tmp_path / "out"
    run_batch([tmp_path / "missing.nii.gz"], out, BatchOptions(progress=False, num_shards=2, shard_id=1))
    (run,) = validated(out / "run.shard1of2.json")["runs"]
    assert run["status"] == "finished" and run["cases"] == [] and run["options"]["shard_id"] == 1
    assert not (out / "run.json").exists()

    import time

    record = RunRecord.start(out, BatchOptions(), ["x.nii.gz"], time.perf_counter())
    (run,) = validated(record.path)["runs"]
    assert record.path == out / "run.json" and run["status"] == "started" and run["finished"] is None


def test_dicom_input_hash_is_content_not_names(tmp_path: Path):
    """A series' hash follows its files' bytes, not their names or order."""
    volume = np.random.default_rng(0).integers(0, 1000, (16, 16, 4)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    write_series(volume, affine, tmp_path / "a", slope=1.0, intercept=0.0, series_uid="1.2.3.4")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for i, f in enumerate(sorted((tmp_path / "b").iterdir())):
        f.rename(f.with_name(f"renamed{i}.dcm"))

    def digest(folder: Path) -> str:
        (case,) = [c for c in discover_cases([folder]) if c.kind == "dicom"]
        return input_sha256(case)

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    victim = next((tmp_path / "b").iterdir())
    victim.write_bytes(victim.read_bytes()[:-2] + b"\x01\x02")
    assert digest(tmp_path / "b") != digest(tmp_path / "a")


def test_batch_import_loads_no_plotting():
    """The inference path's module imports neither matplotlib nor our plotting package (MONAI itself imports
    matplotlib when the model is loaded; that is MONAI's, not ours)."""
    code = ("import sys, monaiunetseg.batch.run; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith('monaiunetseg.visual')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_segment_case_writes_a_run_record_too(segmenter, tmp_path: Path):
    """segment-case (the Slicer module's background job) records its run like segment: command, weights, the
    case with its input hash; a kept result is recorded as reused."""
    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.single import segment_single

    out = tmp_path / "out"
    result = segment_single(SAMPLE_FLAIR, out, BatchOptions(progress=False), segmenter=segmenter)
    assert result.status == "ok"
    (run,) = validated(out / "run.json")["runs"]
    assert run["command"] == "segment-case" and run["status"] == "finished" and run["counts"] == {"ok": 1}
    assert [w["sha256"] for w in run["weights"]] == [sha256(Path(w)) for w in segmenter.weights]
    (case,) = run["cases"]
    assert case["input_sha256"] == sha256(SAMPLE_FLAIR) and not case["reused"]
    segment_single(SAMPLE_FLAIR, out, BatchOptions(progress=False), segmenter=segmenter)
    first, second = validated(out / "run.json")["runs"]
    assert second["cases"][0]["reused"] and second["weights"] == []
