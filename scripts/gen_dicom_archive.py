#!/usr/bin/env python3
"""A large generated DICOM archive for `mg3d status` / rerun timings: SERIES series of SLICES
16 x 16 CT slices each (one folder per series, explicit VR little endian), written once.

    gen_dicom_archive.py OUT [--series 500] [--slices 200]
"""
import argparse
import os
import sys

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(uids, k, position, pixels, shape, spacing, patient, intercept=-1024):
    """One uncompressed CT slice (explicit VR little endian): instance k + 1 of the series whose
    (study, series, frame of reference) UIDs are `uids`, axial (IOP 1,0,0,0,1,0), `pixels` int16
    bytes of `shape` (rows, columns) at `spacing` (row, column, slice) mm, at LPS `position`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    ds.ImagePositionPatient = [f"{x:.4f}" for x in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [spacing[0], spacing[1]], spacing[2]
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
    ds.PixelData = pixels
    return ds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--series", type=int, default=500)
    ap.add_argument("--slices", type=int, default=200)
    a = ap.parse_args()
    stamp = os.path.join(a.out, f".generated-{a.series}x{a.slices}")
    if os.path.exists(stamp):
        return
    pixels = (np.arange(256, dtype=np.int16).reshape(16, 16) % 97).tobytes()
    for s in range(a.series):
        folder = os.path.join(a.out, f"series{s:05d}")
        os.makedirs(folder, exist_ok=True)
        uids = (generate_uid(), generate_uid(), generate_uid())
        for k in range(a.slices):
            ds = ct_slice(uids, k, (0, 0, float(k)), pixels, (16, 16), (1.0, 1.0, 1.0), f"P{s:06d}")
            ds.save_as(os.path.join(folder, f"IM{k:05d}.dcm"), enforce_file_format=True)
        if s % 50 == 0:
            print(f"  series {s}", file=sys.stderr)
    open(stamp, "w").close()


if __name__ == "__main__":
    main()
