"""What a user sees and installs: ``--version``, one line per case without third-party warnings, one Python
statement, and core requirements that the code really uses (itk an extra)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import monaiunetseg
from monaiunetseg.cli import main as cli_main

from conftest import REPO, SAMPLE_FLAIR
from dicom_factory import write_series

# Requirement -> the module the project imports it as (None: used through another package's command).
IMPORT_NAMES = {"torch": "torch", "monai": "monai", "pytorch-ignite": "ignite", "numpy": "numpy", "nibabel": "nibabel",
                "SimpleITK": "SimpleITK", "pydicom": "pydicom", "highdicom": "highdicom", "tifffile": "tifffile",
                "tqdm": "tqdm", "tensorboard": None, "fire": None, "matplotlib": "matplotlib", "scipy": "scipy",
                "onnxruntime": "onnxruntime", "pynetdicom": "pynetdicom"}
# Used without an import of its own: TensorBoardStatsHandler (bundle configs) needs tensorboard, and
# `python -m monai.bundle` (every bundle command in the README) needs fire.
INDIRECT = {"tensorboard": "TensorBoardStatsHandler", "fire": "python -m monai.bundle"}


def _setup_call() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def _names(node: ast.AST) -> list[str]:
    return [re.split(r"[<>=!\[ ]", ast.literal_eval(e))[0] for e in node.elts]  # type: ignore[attr-defined]


def test_version_option_prints_the_package_version(capsys, tmp_path: Path):
    try:
        cli_main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"monaiunetseg {monaiunetseg.__version__}"
    proc = subprocess.run([sys.executable, str(REPO / "setup.py"), "--version"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == monaiunetseg.__version__  # one version, not two


def test_one_supported_python_statement():
    assert ast.literal_eval(_setup_call()["python_requires"]) == ">=3.9"
    readme = (REPO / "docs" / "install-and-size.md").read_text()
    assert "**Python 3.9-3.13**" in readme
    assert "Slicer 5.6/5.8" in readme and "3.10-3.13" in readme  # why 3.9, and why the pinned torch needs 3.10+


def test_core_requirements_are_imported_and_itk_is_an_extra():
    setup = _setup_call()
    core = _names(setup["install_requires"])
    extras = {ast.literal_eval(k): _names(v) for k, v in zip(setup["extras_require"].keys, setup["extras_require"].values)}
    assert "itk" not in core and extras["itk"] == ["itk"]
    assert "jsonschema" in extras["test"] and "SimpleITK" in core
    assert set(core) == set(IMPORT_NAMES), "a requirement was added or removed: say here what imports it"
    sources = "\n".join(p.read_text() for p in (REPO / "MONAIUNetSeg" / "monaiunetseg").rglob("*.py"))
    sources += "\n".join(p.read_text() for p in (REPO / "monai_bundle" / "configs").glob("*.json"))
    for requirement, module in IMPORT_NAMES.items():
        if module is None:
            docs = "".join(p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
            assert INDIRECT[requirement] in sources + docs, requirement
        else:
            assert re.search(rf"(^|\n)\s*(import|from) {module}\b|\$import {module}\b", sources), requirement
    assert not re.search(r"(^|\n)\s*(import|from) itk\b", sources)  # itk only through MONAI's ITKReader, on demand


def test_segment_prints_one_line_per_case_and_no_third_party_warnings(tmp_path: Path):
    """A NIfTI scan, a non-FLAIR series (skipped), a file pydicom warns about (failed): three lines and the
    summary on stdout/stderr, and none of pydicom's UserWarnings."""
    vol = np.random.default_rng(0).integers(0, 400, size=(20, 20, 4)).astype(np.float32)
    write_series(vol, np.diag([-1.0, -1.0, 3.0, 1.0]), tmp_path / "t1", description="AX T1", slope=1.0, intercept=0.0)
    junk = tmp_path / "junk" / "junk.dcm"
    junk.parent.mkdir()
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 3)
    out = tmp_path / "out"
    code = ("import sys\nfrom monaiunetseg.cli import main\n"
            f"sys.exit(main(['segment', {str(SAMPLE_FLAIR)!r}, {str(tmp_path / 't1')!r}, {str(junk)!r}, "
            f"'-o', {str(out)!r}, '--device', 'cpu']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    stdout, stderr = proc.stdout.strip().splitlines(), proc.stderr.strip().splitlines()
    assert len(stdout) == 3 and len(stderr) == 1, (stdout, stderr)
    ok, skipped = sorted(stdout[:2])  # cases decided while looking for them are shown first
    assert re.match(r"ok      TCGA_DU_A5TR_19970726_flair: \d+\.\d\d mL, \d+\.\d s -> .*_seg\.nii\.gz$", ok)
    assert skipped.startswith("skipped ") and "not a FLAIR series" in skipped
    assert stdout[2].startswith("segment: 3 case(s): 1 ok (0 already done), 1 failed, 1 skipped")
    assert stderr[0].startswith(f"FAILED  {junk}: ")
    assert "Warning" not in proc.stderr
    # ... and the same file read without the filter does warn: the test would see a leak
    raw = subprocess.run([sys.executable, "-c", f"import pydicom; pydicom.dcmread({str(junk)!r}, force=True)"],
                         capture_output=True, text=True, timeout=120)
    assert "UserWarning" in raw.stderr
