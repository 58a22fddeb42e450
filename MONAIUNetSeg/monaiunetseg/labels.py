"""What the model's label means, defined once: name, colour and SNOMED CT coding of the one segment.

Used by the DICOM SEG writer (``io.dicom_seg``) and by the Slicer module (``MONAIUNetSegLib.mrml``), so a SEG
and a Slicer segmentation of one scan say the same thing. Plain data: no imports, cheap in Slicer's Python.

* category 49755003 "Morphologically abnormal structure": the FLAIR hyperintensity is an abnormal tissue region,
  not an anatomical structure or a device;
* type 4147007 "Mass": in the population the model is meant for (lower-grade gliomas) the FLAIR abnormality
  outlines the non-enhancing tumour; "Mass" states the finding without claiming a diagnosis;
* anatomic region 12738006 "Brain".
"""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    scheme: str
    value: str
    meaning: str


SEGMENT_LABEL = "FLAIR abnormality"
SEGMENT_ID = "FLAIR_abnormality"
FOREGROUND = 1  # labelmap value of the segment (0 is background)
CATEGORY = Code("SCT", "49755003", "Morphologically abnormal structure")
TYPE = Code("SCT", "4147007", "Mass")
ANATOMIC_REGION = Code("SCT", "12738006", "Brain")
# "Mass" in 3D Slicer's General Anatomy terminology; this is its recommended display colour (RGB, 0-1).
COLOR = (144 / 255.0, 238 / 255.0, 144 / 255.0)
