"""What the ``monaiunetseg`` commands print: their own lines, not third-party noise.

PyTorch, MONAI, pydicom and highdicom warn about things a user of the command cannot act on (deprecations of
their own internals, MONAI's nvImageCodec plug-in probe, highdicom's conversion notes), once per process or once
per case, which buries the one line per case that matters. They are filtered here, once, at the start of a
command; ``python -W ...`` or ``PYTHONWARNINGS`` (any explicit warning option but :data:`BUNDLE_CONFIG_FILTER`)
turns the filter off for debugging.

``python -m monai.bundle`` warns that a config runs code (``parsing config_file ...: ... eval() ...``) before any
config line runs, so only an interpreter option can hide it: the README's bundle commands start with ``python -W
"ignore:parsing config_file"``, a filter for that one message (Python matches it at the message's start).
"""

from __future__ import annotations

import logging
import sys
import warnings

# Loggers whose INFO/WARNING records are notes about the library, not about the user's data.
NOISY_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin", "highdicom", "highdicom.legacy", "pydicom")
_filtered = False
# The -W option of the bundle commands: MONAI's config-code warning only (see above); not a request for warnings.
BUNDLE_CONFIG_FILTER = "ignore:parsing config_file"


def quiet_third_party() -> bool:
    """Filter third-party warnings and chatter (idempotent); False when the user asked for warnings explicitly."""
    global _filtered
    if any(option != BUNDLE_CONFIG_FILTER for option in sys.warnoptions):
        return False
    if _filtered:
        return True
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=r".*[Nn]v[Ii]mg[Cc]odec")  # MONAI's GPU JPEG plug-in probe
    warnings.filterwarnings("ignore", category=UserWarning,
                            module=r"(torch|monai|ignite|pydicom|highdicom|SimpleITK|itk)(\.|$)")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _filtered = True
    return True
