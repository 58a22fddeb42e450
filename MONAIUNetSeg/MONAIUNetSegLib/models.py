"""Which model the module runs: a model set of the shipped bundle, or a model folder made by ``finetune``.

Slicer-free and Qt-free (standard library only), so the panel can list the shipped sets before torch or the
core is installed, and a wrong folder is refused with a plain message before any job starts (a background
job would otherwise only report it after a process start and a volume write).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

INFERENCE_CONFIG = Path("configs") / "inference.json"
DEFAULT_MODEL = "default"
FOLDER_CHOICE = "model folder"  # the panel's model choice that means "the folder below"
FALLBACK_SETS = ("default", "fast", "full")  # when the shipped bundle cannot be read (panel only)
SHIPPED_BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"  # source checkout / extension layout


class ModelFolderError(ValueError):
    """The chosen model folder cannot be used; the message says why and what a model folder holds."""


@dataclass(frozen=True)
class ModelChoice:
    """What a run uses: ``bundle`` None is the shipped bundle (or ``$MONAIUNETSEG_BUNDLE``); ``model`` is one of
    that bundle's model sets."""

    model: str = DEFAULT_MODEL
    bundle: str | None = None

    def describe(self) -> str:
        return f"model folder {self.bundle}" if self.bundle else f"model set '{self.model}'"


def model_sets(bundle: str | os.PathLike | None = None) -> list[str]:
    """The model set names of ``bundle``'s configs/inference.json (default: the shipped bundle), 'default' first;
    the usual three when the shipped bundle is unreadable (the core reports that properly at run time)."""
    root = Path(bundle) if bundle else Path(os.environ.get("MONAIUNETSEG_BUNDLE") or SHIPPED_BUNDLE)
    try:
        names = list(_read_config(root)["models"])
    except (ModelFolderError, KeyError, TypeError):
        return list(FALLBACK_SETS)
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL, names.index(n)))


def _read_config(root: Path) -> dict:
    path = root / INFERENCE_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{root} is not a model folder: it has no {INFERENCE_CONFIG.as_posix()} (choose the "
                               "folder 'monaiunetseg finetune' wrote, holding models/ and configs/)") from None
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"{path} is not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path} is not a model configuration (no JSON object)")
    return config


def check_model_folder(folder: str | os.PathLike, model: str = DEFAULT_MODEL) -> Path:
    """``folder`` as an absolute path when it holds a usable ``model`` set (config readable, every weights file
    present); else :class:`ModelFolderError` saying why."""
    text = str(folder).strip() if folder is not None else ""
    if not text or text == ".":
        raise ModelFolderError("no model folder chosen: choose the folder 'monaiunetseg finetune' wrote")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise ModelFolderError(f"model folder {root} does not exist or is not a folder")
    models = _read_config(root).get("models")
    if not isinstance(models, dict) or model not in models:
        sets = ", ".join(sorted(models)) if isinstance(models, dict) else "none"
        raise ModelFolderError(f"{root / INFERENCE_CONFIG}: no model set {model!r} (it has: {sets})")
    files = models[model] if isinstance(models[model], list) else [models[model]]
    missing = [f for f in files if not isinstance(f, str) or not (root / f).is_file()]
    if missing or not files:
        raise ModelFolderError(f"model folder {root}: weights missing for set {model!r}: "
                               f"{', '.join(map(str, missing)) or 'none listed'}")
    return root.resolve()


def resolve(choice: str, folder: str | os.PathLike | None = None) -> ModelChoice:
    """The panel's (model choice, folder) as a :class:`ModelChoice`: a shipped set as is; ``FOLDER_CHOICE`` the
    folder's default set, checked."""
    if choice == FOLDER_CHOICE:
        return ModelChoice(DEFAULT_MODEL, str(check_model_folder(folder)))
    return ModelChoice(choice or DEFAULT_MODEL, None)
