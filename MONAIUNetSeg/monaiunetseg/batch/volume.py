"""Reading a case's input volume by its kind, for segmenting it (``case``) and for measuring a kept result against
it (``resume``)."""

from __future__ import annotations

from monaiunetseg.batch.cases import Case


def read_volume(case: Case):
    """The case's volume (``.array`` float32 (i, j, k), ``.affine`` RAS, plus what its writer needs), by kind."""
    if case.kind == "picture":
        from monaiunetseg.io.image2d import read_picture_volume

        return read_picture_volume(case.source)
    if case.kind == "nifti":
        from monaiunetseg.io.nifti import read_nifti_volume

        return read_nifti_volume(case.source)
    if case.kind in ("nrrd", "metaimage"):
        from monaiunetseg.io.nrrd_mha import read_image_volume

        return read_image_volume(case.source)
    if case.kind == "itk":
        from monaiunetseg.io.itk_reader import read_itk_volume

        return read_itk_volume(case.source)
    from monaiunetseg.io.dicom_volume import load_volume

    return load_volume(case.series)  # type: ignore[arg-type]
