"""MONAIUNetSeg core: Slicer-free geometry, I/O and inference for LGG FLAIR abnormality segmentation.

Everything that computes lives here so that the MONAI bundle, the ``monaiunetseg`` CLI and the
3D Slicer module share one implementation.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import submodules on first use (``MONAIUNetSegLib.inference`` in bundle config expressions)."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from exc
