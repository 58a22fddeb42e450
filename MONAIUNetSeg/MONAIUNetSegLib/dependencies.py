"""Which Python packages the core needs in Slicer's Python, and how to install them without harm.

Slicer-free (standard library only), so the module can check before anything heavy is imported. Slicer's own
numpy and SimpleITK (and an installed torch, whose CUDA/CPU build was chosen on purpose) are pinned with a pip
constraints file so that installing the rest can never replace them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

# torch comes from the PyTorch extension's installer (the right CUDA/CPU build) when it is available.
TORCH_REQUIREMENT = "torch>=2.1,<2.15"
TORCH_VERSION_REQUIREMENT = ">=2.1,<2.15"


@dataclass(frozen=True)
class Dependency:
    module: str       # import name
    requirement: str  # pip requirement
    why: str


# What inference needs (the in-process Segmenter and the background ``segment`` command on a NIfTI input).
REQUIRED = (
    Dependency("torch", TORCH_REQUIREMENT, "PyTorch, runs the network"),
    Dependency("monai", "monai>=1.4,<1.7", "MONAI, preprocessing and the bundle's network definition"),
    Dependency("nibabel", "nibabel>=5", "NIfTI reading and writing in the core"),
)
# Shipped with Slicer: never installed, upgraded or replaced from here.
NEVER_REPLACE = ("numpy", "SimpleITK")


def missing(required: tuple[Dependency, ...] = REQUIRED) -> list[Dependency]:
    """The dependencies that cannot be imported in this Python (checked without importing them)."""
    importlib.invalidate_caches()
    return [d for d in required if importlib.util.find_spec(d.module) is None]


def describe(deps: list[Dependency]) -> str:
    return "\n".join(f"- {d.requirement}  ({d.why})" for d in deps)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def constraints(extra_pins: tuple[str, ...] = ("torch",)) -> list[str]:
    """``name==version`` pins for Slicer's numpy and SimpleITK, and for an already installed torch."""
    pins = []
    for name in NEVER_REPLACE + tuple(extra_pins):
        version = installed_version(name)
        if version:
            pins.append(f"{name}=={version}")
    return pins


def write_constraints(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(constraints()) + "\n", encoding="utf-8")
    return path


def pytorch_utils_available() -> bool:
    """Whether the 'PyTorch' Slicer extension (module ``PyTorchUtils``, the CUDA/CPU-aware installer) is present."""
    importlib.invalidate_caches()
    return importlib.util.find_spec("PyTorchUtils") is not None


def torch_pip_arguments(constraintsPath: str | os.PathLike | None = None) -> list[str]:
    """``pip install`` arguments for PyTorch from PyPI (the fallback without the PyTorch extension)."""
    return [TORCH_REQUIREMENT] + (["-c", str(constraintsPath)] if constraintsPath else [])


def pip_arguments(deps: list[Dependency], constraintsPath: str | os.PathLike | None = None) -> list[str]:
    """``pip install`` arguments (``slicer.util.pip_install`` takes the list) for the missing ``deps`` other than
    torch, which is installed first and separately."""
    requirements = [d.requirement for d in deps if d.module != "torch"]
    if not requirements:
        return []
    return requirements + (["-c", str(constraintsPath)] if constraintsPath else [])


def confirmation_text(deps: list[Dependency]) -> str:
    """The question the module asks before installing ``deps`` (what, how torch comes, what is never touched)."""
    torch_note = ""
    if any(d.module == "torch" for d in deps):
        torch_note = ("\n\nPyTorch will be installed with the PyTorch extension's installer (the right CUDA or CPU build)."
                      if pytorch_utils_available() else
                      "\n\nThe PyTorch extension is not installed, so PyTorch will come from PyPI (default build). "
                      "For a specific CUDA build, cancel, install the 'PyTorch' extension from the Extensions Manager, "
                      "restart Slicer and try again.")
    return ("MONAIUNetSeg needs these Python packages, which are missing from Slicer's Python:\n\n" + describe(deps)
            + torch_note + "\n\nSlicer's own numpy and SimpleITK are kept as they are. Install now? (PyTorch can take "
            "several GB.)")


def install(deps: list[Dependency], constraintsPath: str | os.PathLike) -> None:
    """torch through the PyTorch extension when present (right CUDA/CPU build), the rest with pip, all under a
    constraints file pinning Slicer's numpy and SimpleITK (and an installed torch). Inside Slicer only."""
    import slicer.util

    constraintsPath = write_constraints(constraintsPath)
    if any(d.module == "torch" for d in deps):
        if pytorch_utils_available():
            import PyTorchUtils

            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                raise RuntimeError("PyTorch was not installed")
        else:
            slicer.util.pip_install(torch_pip_arguments(constraintsPath))
        constraintsPath = write_constraints(constraintsPath)  # now also pins the torch just installed
    arguments = pip_arguments(missing(), constraintsPath)
    if arguments:
        slicer.util.pip_install(arguments)
