#!/usr/bin/env python3
"""Cross-check a synthetic corpus with the established readers (pydicom, nibabel).

Usage: check_synth.py CORPUS_DIR [--max N]
For every volume in truth/geometry.jsonl: read it with pydicom (DICOM series, sorted by
ImagePositionPatient projected on the slice normal) or nibabel (NIfTI), rebuild the voxel->RAS
affine and the HU voxels, and compare them with the truth (affine within 1e-3 mm, HU bytes by
sha256). Prints a JSON summary; exits 1 on any mismatch.
"""
import glob, hashlib, json, os, sys

import nibabel as nib
import numpy as np
import pydicom


def enhanced_volume(path):
    """One Enhanced CT object: frames positioned by the per-frame functional groups."""
    d = pydicom.dcmread(path)
    sh = d.SharedFunctionalGroupsSequence[0]
    iop = np.array(sh.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    ps = np.array(sh.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    pv = sh.PixelValueTransformationSequence[0]
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    pos = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float) for f in d.PerFrameFunctionalGroupsSequence]
    order = sorted(range(len(pos)), key=lambda i: float(np.dot(n, pos[i])))
    dz = float(np.dot(n, pos[order[-1]] - pos[order[0]])) / (len(order) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * ps[1], c * ps[0], n * dz, pos[order[0]]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    arr = d.pixel_array.astype(np.float64)[order]
    hu = np.rint(arr * float(pv.RescaleSlope) + float(pv.RescaleIntercept))
    return ras, hu.astype("<i2"), d


def dicom_volume(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.dcm")))
    if len(files) == 1 and int(getattr(pydicom.dcmread(files[0], stop_before_pixels=True), "NumberOfFrames", 1) or 1) > 1:
        return enhanced_volume(files[0])
    ds = [pydicom.dcmread(f) for f in files]
    iop = np.array(ds[0].ImageOrientationPatient, dtype=float)
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    ds.sort(key=lambda d: float(np.dot(n, np.array(d.ImagePositionPatient, dtype=float))))
    ps = np.array(ds[0].PixelSpacing, dtype=float)  # row spacing, column spacing
    pos = [np.array(d.ImagePositionPatient, dtype=float) for d in ds]
    dz = float(np.dot(n, pos[-1] - pos[0])) / (len(ds) - 1)
    lps = np.eye(4)
    lps[:3, 0] = r * ps[1]
    lps[:3, 1] = c * ps[0]
    lps[:3, 2] = n * dz
    lps[:3, 3] = pos[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    hu = np.stack([np.rint(d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)) for d in ds])
    return ras, hu.astype("<i2"), ds[0]


def nifti_volume(path, g):
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)  # applies scl_slope / scl_inter
    if g["nifti_variant"] == "raw":
        data = data * g["slope"] + g["intercept"]  # rescale from the metadata CSV
    hu = np.rint(data).astype("<i2").transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
    return img.affine, np.ascontiguousarray(hu)


def main():
    root = sys.argv[1]
    limit = int(sys.argv[sys.argv.index("--max") + 1]) if "--max" in sys.argv else None
    geo = [json.loads(l) for l in open(os.path.join(root, "truth", "geometry.jsonl"))]
    failures, counts = [], {"dicom": 0, "nifti": 0}
    for g in geo[:limit]:
        path = os.path.join(root, g["path"])
        try:
            if g["format"] == "dicom":
                affine, hu, first = dicom_volume(path)
                if "^" not in str(first.PatientName):
                    failures.append(f"{g['volume_name']}: PatientName missing")
                ts = str(first.file_meta.TransferSyntaxUID)
                if ts != g["transfer_syntax"]:
                    failures.append(f"{g['volume_name']}: transfer syntax {ts} != {g['transfer_syntax']}")
            else:
                affine, hu = nifti_volume(path, g)
            counts[g["format"]] += 1
        except Exception as e:  # a reader failure is a finding, not a crash
            failures.append(f"{g['volume_name']}: cannot read: {e!r}")
            continue
        want = np.array(g["affine_ras"])
        if np.abs(affine - want).max() > 1e-3:
            failures.append(f"{g['volume_name']}: affine {affine.round(4).tolist()} != {want.tolist()}")
        if list(hu.shape) != [g["shape"][2], g["shape"][1], g["shape"][0]]:
            failures.append(f"{g['volume_name']}: shape {hu.shape} != {g['shape']} (k, j, i)")
        elif hashlib.sha256(hu.tobytes()).hexdigest() != g["hu_sha256"]:
            failures.append(f"{g['volume_name']}: HU voxels differ (min {hu.min()} max {hu.max()} mean {hu.mean():.3f} vs {g['hu_mean']})")
    print(json.dumps({"checked": counts, "failures": failures}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
