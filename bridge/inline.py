"""CTs sent inline in a "run" request: format detection from magic bytes, and a safe read via engine.io.

Only self-contained single files are accepted: NIfTI-1/2 (.nii, gzipped .nii.gz), NRRD with attached data
and MetaImage .mha with ElementDataFile = LOCAL. A detached header (NRRD "data file:", MHA pointing at
another file) is refused: it would make the server read a file named by the client.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

from engine.errors import InputError

FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nifti": None, "nrrd": ".nrrd", "mha": ".mha"}
MAX_VOXELS_DEFAULT = 1024 * 1024 * 1024  # 1 Gi voxels: far above any CT, far below what breaks the host


def _nifti_magic(head: bytes) -> bool:
    if len(head) < 348:
        return False
    le, be = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    if 348 in (le, be):
        return head[344:348] in (b"n+1\0", b"ni1\0")
    if 540 in (le, be):
        return head[4:8] in (b"n+2\0", b"ni2\0")
    return False


def detect_suffix(data: bytes, fmt: str | None = None) -> str:
    """The file suffix SimpleITK needs for these bytes. Raises InputError for anything unsupported."""
    if fmt is not None:
        if not isinstance(fmt, str) or fmt.lower().lstrip(".") not in FORMATS:
            raise InputError(f"unsupported format {fmt!r:.40} (one of: {', '.join(FORMATS)})")
        fmt = fmt.lower().lstrip(".")
    head = bytes(data[:4096])
    if head[:2] == b"\x1f\x8b":  # gzip: only NIfTI is read gzipped by SimpleITK
        try:
            inner = zlib.decompressobj(wbits=31).decompress(head, 600)
        except zlib.error:
            raise InputError("inline ct: corrupt gzip stream") from None
        if not _nifti_magic(inner) and fmt not in ("nii.gz", "nifti"):
            raise InputError("inline ct: gzip data is not a NIfTI image")
        return ".nii.gz"
    if _nifti_magic(head):
        return ".nii"
    if head.startswith(b"NRRD"):
        hdr = head.split(b"\n\n", 1)[0].lower()
        if b"data file:" in hdr or b"datafile:" in hdr:
            raise InputError("inline ct: detached NRRD headers are not accepted (send attached data)")
        return ".nrrd"
    if b"ElementDataFile" in head or head.startswith((b"ObjectType", b"NDims")):
        line = next((ln for ln in head.splitlines() if ln.strip().startswith(b"ElementDataFile")), b"")
        if line.split(b"=", 1)[-1].strip() != b"LOCAL":
            raise InputError("inline ct: only .mha with ElementDataFile = LOCAL is accepted")
        return ".mha"
    if fmt in ("nii.gz", "nii", "nrrd", "mha"):  # the caller insists; SimpleITK will judge
        return FORMATS[fmt]
    raise InputError("inline ct: not a NIfTI, NRRD or MHA file (unrecognised magic bytes)")


def check_header(path: Path, max_voxels: int = MAX_VOXELS_DEFAULT) -> None:
    """Reads only the header: refuses a claimed size that would exhaust memory before reading pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("inline ct: cannot read the image header") from None
    size = reader.GetSize()
    n = 1
    for s in size:
        n *= int(s)
    if len(size) != 3:
        raise InputError(f"inline ct: expected a 3-D image, got {len(size)}-D")
    if n > max_voxels:
        raise InputError(f"inline ct: {list(size)} = {n} voxels exceeds the limit of {max_voxels}")


def read_inline(data: bytes, suffix: str, name: str, max_voxels: int = MAX_VOXELS_DEFAULT):
    """Bytes of a CT file -> engine.types.Volume, via a private temp file (removed before returning)."""
    from engine.io import read_volume

    fd, tmp = tempfile.mkstemp(prefix="spinert-inline-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        check_header(Path(tmp), max_voxels)
        vol = read_volume(tmp, name=name)
    except InputError as exc:
        # engine.io names the temp path; the client never saw it.
        raise InputError(str(exc).replace(tmp, "inline ct")) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return vol
