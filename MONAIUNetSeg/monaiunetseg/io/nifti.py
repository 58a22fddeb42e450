"""NIfTI input and labelmap output that keeps the input's voxel grid and header.

A labelmap is only useful if every viewer overlays it exactly on the scan it came from, so the output of a
NIfTI input is written from a copy of the input's own header (qform and sform, their codes, units and
extensions kept) with only the data type, scaling and description changed.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.errors import describe
from monaiunetseg.files import atomic_path
from monaiunetseg.geometry import GeometryError, check_affine
from monaiunetseg.io.guard import voxel_budget_problem

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_DESCRIPTION = b"MONAIUNetSeg FLAIR abnormality (research use only)"
# The --save-probabilities map: float32 foreground probability (0-1) on the labelmap's grid.
PROBABILITY_DESCRIPTION = b"MONAIUNetSeg FLAIR abnormality probability (research use only)"
OUTPUT_DESCRIPTIONS = (LABEL_DESCRIPTION, PROBABILITY_DESCRIPTION)
# Which input a labelmap is the result of: JSON {"MONAIUNetSeg": {...}} in a NIfTI comment extension (code 6).
SOURCE_KEY, COMMENT_ECODE = "MONAIUNetSeg", 6
# A compressed file whose header claims more voxel data than this is decompressed once (without keeping the
# data) to check that the data is there before an array of the claimed size is allocated.
STREAM_CHECK_BYTES = 64 * 2**20


class NiftiInputError(ValueError):
    """A NIfTI input that cannot be segmented; the message names the file and the problem."""


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """``scan.nii.gz`` -> ``scan`` (both suffixes, case-insensitive)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class NiftiVolume:
    """A 3D volume read from NIfTI: float32 data, its RAS affine and the header to write results with."""

    path: Path
    array: np.ndarray  # 3D (trailing singleton dimensions of the file dropped)
    affine: np.ndarray
    header: nib.Nifti1Header
    image_class: type
    file_shape: tuple[int, ...]  # the shape as stored, which the labelmap is written with


def _open(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise NiftiInputError(f"{path}: no such file")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel, gzip and zlib raise many types for corrupt files
        raise NiftiInputError(f"{path}: cannot read as NIfTI ({describe(exc)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiInputError(f"{path}: not a NIfTI image (read as {type(img).__name__})")
    check_pixdim(path)
    return img


def check_pixdim(path: Path) -> None:
    """Refuse a header whose geometry comes from ``pixdim`` (no sform) with a zero or non-finite voxel size:
    nibabel quietly reads such a size as 1 mm, which would make volumes and distances up."""
    try:
        header = _header_block(path)
    except Exception:  # nibabel read it: a header it can read in full is checked by check_affine
        return
    if int(header["sform_code"]) > 0:
        return
    sizes = np.asarray(header["pixdim"][1:4], dtype=float)
    if not np.isfinite(sizes).all() or (sizes == 0).any():
        raise GeometryError(f"{path}: invalid geometry: voxel size (pixdim) {' x '.join(f'{s:g}' for s in sizes)} "
                            "mm has a zero or non-finite axis and no sform gives another; fix the header")


def spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3D shape of ``shape`` after dropping trailing singleton dimensions; 2D and 4D are errors."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise NiftiInputError(f"{path}: {len(dims)}D image of shape {tuple(shape)}: expected a single 3D volume "
                              "(split time series / multi-channel images first)")
    extended = sum(int(d) > 1 for d in dims)  # axes with more than one voxel: the image's real dimensionality
    if len(dims) < 3 or extended < 3:
        kind = {0: "a single voxel", 1: "a 1D image"}.get(extended, "a 2D image")
        raise NiftiInputError(f"{path}: {kind} of shape {tuple(shape)}: expected a 3D volume (at least 2 voxels "
                              "along each of 3 axes)")
    return tuple(dims)  # type: ignore[return-value]


def _data_bytes_present(path: Path, needed: int) -> int:
    """How many of the first ``needed`` bytes the file holds once decompressed; stops reading at ``needed``,
    so a small file claiming a huge image costs one bounded pass, never an allocation of the claimed size.
    A compressed file claiming at most :data:`STREAM_CHECK_BYTES` is not pre-read (reading it fails cheaply)."""
    if not str(path).lower().endswith(".gz"):
        return min(path.stat().st_size, needed)
    if needed <= STREAM_CHECK_BYTES:
        return needed
    got = 0
    try:
        with gzip.open(path, "rb") as fh:
            while got < needed:
                chunk = fh.read(min(2**20, needed - got))
                if not chunk:
                    break
                got += len(chunk)
    except (OSError, EOFError, zlib.error):  # truncated or corrupt stream: what came before it is what there is
        pass
    return got


def check_offset(img: nib.Nifti1Image, path: Path, offset: int) -> None:
    """Refuse a single-file NIfTI whose voxel data would start inside its own header (``vox_offset`` below
    352 for NIfTI-1, 540 for NIfTI-2; the standard requires at least that): read from there, the header's bytes
    become voxels and the image comes out shifted, yet looks fine."""
    magic = bytes(np.asarray(img.header["magic"]).tobytes()).rstrip(b"\0")
    if magic not in (b"n+1", b"n+2"):  # a .hdr/.img pair: the data file begins at its own offset
        return
    minimum = 352 if magic == b"n+1" else 540
    if offset < minimum:
        version = "NIfTI-1" if magic == b"n+1" else "NIfTI-2"
        raise NiftiInputError(f"{path}: invalid header: vox_offset is {offset}, but a single-file {version} image "
                              f"keeps its voxel data after its {minimum}-byte header (vox_offset >= {minimum}); "
                              "the voxels would be read from the header: fix or re-save the file")


def check_header(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse, before any voxel is read, an image whose header asks for more voxels than the budget, holds
    complex values, or describes more data than the file holds (a truncated or forged file)."""
    problem = voxel_budget_problem(img.shape)
    if problem:
        raise NiftiInputError(f"{path}: {problem}")
    dtype = img.header.get_data_dtype()
    if dtype.kind == "c":
        raise NiftiInputError(f"{path}: complex-valued voxels ({dtype}): expected a real-valued image; save the "
                              "magnitude (not the complex data) as the input")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise NiftiInputError(f"{path}: voxel type {dtype} (e.g. RGB): expected a single real-valued channel")
    offset = int(getattr(img.dataobj, "offset", 0))  # the file's (the image's header copy has it reset)
    check_offset(img, path, offset)
    needed = offset + int(np.prod(img.shape, dtype=np.int64)) * dtype.itemsize
    present = _data_bytes_present(path, needed)
    if present < needed:
        dims = " x ".join(str(d) for d in img.shape)
        raise NiftiInputError(f"{path}: cannot read voxel data: truncated or inconsistent file: the header "
                              f"describes {dims} {dtype} voxels ({needed - offset} bytes of data after byte {offset}) "
                              f"but the file holds only {max(present - offset, 0)} (uncompressed)")


SLAB_BYTES = 2 * 2**20  # raw bytes converted at a time by :func:`_read_in_slabs`


def _read_in_slabs(img: nib.Nifti1Image, shape: tuple[int, int, int]) -> np.ndarray:
    """The voxels as float32, read and converted a few slices at a time: a float64 image at the voxel budget is
    2 GiB, and nibabel would hold it whole next to its 1 GiB float32 copy. Unscaled values are cast exactly as
    ``get_fdata(dtype=float32)`` casts them; scaled ones are scaled in float64 first."""
    from nibabel.openers import ImageOpener

    proxy = img.dataobj
    dtype = img.header.get_data_dtype()
    slope, inter = float(proxy.slope), float(proxy.inter)
    nx, ny, nz = shape
    per_slice = nx * ny
    step = max(1, SLAB_BYTES // (per_slice * dtype.itemsize))
    out = np.empty(shape, dtype=np.float32, order="F")
    with ImageOpener(proxy.file_like, "rb") as fh:
        fh.seek(int(proxy.offset))
        for k0 in range(0, nz, step):
            k = min(step, nz - k0)
            raw = fh.read(per_slice * k * dtype.itemsize)
            if len(raw) < per_slice * k * dtype.itemsize:
                raise NiftiInputError(f"{img.get_filename()}: cannot read voxel data: file ends in slice {k0}")
            slab = np.frombuffer(raw, dtype=dtype).reshape((nx, ny, k), order="F")
            if slope != 1.0 or inter != 0.0:
                slab = slab.astype(np.float64)  # one copy, scaled in place
                slab *= slope
                slab += inter
            out[:, :, k0:k0 + k] = slab
    return out


def read_nifti_volume(path: str | os.PathLike) -> NiftiVolume:
    """Read and check one NIfTI volume (3D, real-valued, finite voxels, a usable geometry)."""
    path = Path(path)
    img = _open(path)
    shape = spatial_shape(img.shape, path)
    check_header(img, path)
    affine = check_affine(img.affine, str(path))
    try:
        if img.header.get_data_dtype().itemsize > 4:  # float64/int64: a whole copy would be twice the output
            data = _read_in_slabs(img, shape)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged")).reshape(shape)
    except NiftiInputError:
        raise
    except Exception as exc:  # truncated data, RGB/complex types
        raise NiftiInputError(f"{path}: cannot read voxel data ({describe(exc)})") from exc
    bad = sum(int(np.count_nonzero(~np.isfinite(data[..., k:k + 16]))) for k in range(0, data.shape[-1], 16))
    if bad:  # counted in slabs: a mask of the whole volume would be a quarter of it again
        raise NiftiInputError(f"{path}: {bad} NaN or infinite voxel(s) of {data.size}; fix or mask them first")
    return NiftiVolume(path, data, affine.copy(), img.header.copy(), type(img), tuple(img.shape))


def grid_of(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(3D shape, affine) from the header only: cheap check that an existing output fits its input."""
    path = Path(path)
    img = _open(path)
    return spatial_shape(img.shape, path), img.affine


def _header_block(path: str | os.PathLike) -> nib.Nifti1Header | nib.Nifti2Header:
    """The fixed-size header alone (at most 540 bytes read, decompressed): no extension or voxel is touched."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read(nib.Nifti2Header.template_dtype.itemsize)
    sizeof_hdr = int.from_bytes(raw[:4], "little")
    if sizeof_hdr not in (348, 540):
        sizeof_hdr = int.from_bytes(raw[:4], "big")
    klass = nib.Nifti2Header if sizeof_hdr == 540 else nib.Nifti1Header
    return klass(binaryblock=raw[: klass.template_dtype.itemsize], check=False)


def is_our_labelmap(path: str | os.PathLike) -> bool:
    """True for a labelmap (or probability map) this project wrote (header description): an earlier output is
    not a scan to segment.
    Reads the fixed header only, so a forged extension or data size costs nothing here."""
    try:
        descrip = _header_block(path)["descrip"].item()
    except Exception:  # unreadable: not ours; reading it as an input will report the problem
        return False
    return bytes(descrip).startswith(OUTPUT_DESCRIPTIONS)


def _source_of(extension) -> dict | None:
    if extension.get_code() != COMMENT_ECODE:
        return None
    try:
        data = json.loads(bytes(extension.get_content()).rstrip(b"\0 ").decode("utf-8"))
    except (TypeError, ValueError):  # not our JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None
    record = data.get(SOURCE_KEY) if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def read_source_record(path: str | os.PathLike) -> dict | None:
    """The source record written with a labelmap (see ``source`` of the writers); None when there is none."""
    for extension in _open(Path(path)).header.extensions:
        record = _source_of(extension)
        if record is not None:
            return record
    return None


def _set_source(header: nib.Nifti1Header, source: dict | None) -> None:
    """Replace any source record in ``header`` (e.g. copied from the input's header) by ``source``."""
    for extension in [e for e in header.extensions if _source_of(e) is not None]:
        header.extensions.remove(extension)
    if source is not None:
        content = json.dumps({SOURCE_KEY: source}).encode("utf-8")
        header.extensions.append(nib.nifti1.Nifti1Extension(COMMENT_ECODE, content))


def _save(img: nib.Nifti1Image, target: Path) -> Path:
    with atomic_path(target) as tmp:
        nib.save(img, tmp)
    return target


def output_array(values: np.ndarray) -> tuple[np.ndarray, bytes]:
    """A labelmap as uint8, or a probability map (any float array) as float32 clipped to 0-1; its description."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return np.clip(values, 0.0, 1.0).astype(np.float32, copy=False), PROBABILITY_DESCRIPTION
    return values.astype(np.uint8, copy=False), LABEL_DESCRIPTION


def _label_header(header: nib.Nifti1Header, shape: tuple[int, ...], dtype=np.uint8,
                  description: bytes = LABEL_DESCRIPTION) -> nib.Nifti1Header:
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    header["descrip"] = description
    return header


def write_labelmap_like(labels: np.ndarray, reference: NiftiVolume, target: str | os.PathLike,
                        source: dict | None = None) -> Path:
    """Write ``labels`` (input's shape) with the input's header and affine, atomically; ``source`` (JSON-able)
    is recorded in the file as which input it is the result of (:func:`read_source_record`). A float array is
    written as a float32 probability map instead."""
    labels, description = output_array(labels)
    if labels.shape != reference.array.shape:
        raise ValueError(f"labelmap shape {labels.shape} != input shape {reference.array.shape}")
    labels = labels.reshape(reference.file_shape)
    header = _label_header(reference.header.copy(), labels.shape, labels.dtype, description)
    _set_source(header, source)
    # The affine equals the header's best affine, so nibabel keeps the header's qform/sform as they are.
    img = reference.image_class(labels, reference.affine, header=header)
    return _save(img, Path(target))


def write_labelmap(labels: np.ndarray, affine: np.ndarray, target: str | os.PathLike, source: dict | None = None) -> Path:
    """Write ``labels`` with a fresh header whose qform and sform are ``affine`` (scanner frame), atomically;
    ``source`` and a float array as for :func:`write_labelmap_like`."""
    labels, description = output_array(labels)
    img = nib.Nifti1Image(labels, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    _label_header(img.header, labels.shape, labels.dtype, description)
    _set_source(img.header, source)
    return _save(img, Path(target))
