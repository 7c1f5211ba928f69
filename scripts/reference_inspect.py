#!/usr/bin/env python3
"""Reference values for `mg3d inspect`, computed with pydicom + numpy and nibabel.

Usage: reference_inspect.py FILE... ; prints one JSON list. For DICOM files: shape [cols, rows,
frames], RAS affine built from ImageOrientationPatient / ImagePositionPatient / PixelSpacing /
SliceThickness (LPS -> RAS), and value statistics after the modality LUT (MONOCHROME1 inverted first,
PixelPaddingValue mapped to the minimum). For NIfTI: nibabel's affine and scaled data (first volume
of 4D images) and every dimension of the file.
"""
import json, sys

import numpy as np


def dicom_ref(path):
    import pydicom
    from pydicom.pixels import apply_modality_lut
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise ValueError("not grayscale")
    if frames == 1:
        arr = arr[np.newaxis]
    stored = arr.astype(np.float64)
    bits = int(ds.BitsStored)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    if ds.PhotometricInterpretation == "MONOCHROME1":
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        stored = hi + lo - stored
    pad = getattr(ds, "PixelPaddingValue", None)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    vals = stored * slope + inter
    if pad is not None:
        mask = stored == float(pad)
        if mask.any() and (~mask).any():
            vals[mask] = vals[~mask].min()
    iop = np.array(getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    ps = np.array(getattr(ds, "PixelSpacing", [1, 1]), dtype=float)
    dz = float(getattr(ds, "SliceThickness", 0) or 0) or 1.0
    ipp = np.array(getattr(ds, "ImagePositionPatient", [0, 0, 0]), dtype=float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * ps[1], c * ps[0], n * dz, ipp
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return {
        "shape": [int(vals.shape[2]), int(vals.shape[1]), int(vals.shape[0])],
        "affine": ras.tolist(),
        "single_frame_geometry": frames == 1 and hasattr(ds, "ImageOrientationPatient"),
        "values": stats(vals),
    }


def nifti_ref(path):
    import nibabel as nib
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    while data.ndim > 3:
        data = data[..., 0]
    a = img.affine
    return {"shape": list(data.shape) + [1] * (3 - data.ndim), "dims": [int(d) for d in img.shape], "affine": a.tolist(), "single_frame_geometry": True, "values": stats(data)}


def stats(v):
    if not np.isfinite(v).all():
        raise ValueError("non-finite values")
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "sum": float(v.sum())}


def main():
    out = []
    for p in sys.argv[1:]:
        try:
            ref = nifti_ref(p) if p.endswith((".nii", ".nii.gz")) else dicom_ref(p)
            ref.update(file=p, ok=True)
        except Exception as e:
            ref = {"file": p, "ok": False, "error": repr(e)[:300]}
        out.append(ref)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
