"""How an exception is described inside a message: never an empty reason.

``MemoryError()`` and ``EOFError()`` often carry no text, so "cannot read voxel data (MemoryError: )" told the
user nothing; every message that quotes an exception goes through :func:`describe`.
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """``"<Type>: <text>"``; for memory exhaustion a plain "out of memory" sentence."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return (f"out of memory ({exc.__class__.__name__}{': ' + text if text else ''}): the image needs more "
                "memory than is free; free memory or use a machine with more")
    return f"{exc.__class__.__name__}: {text or 'no details given'}"
