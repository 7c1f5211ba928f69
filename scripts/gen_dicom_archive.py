#!/usr/bin/env python3
"""A large generated DICOM archive for `mg3d status` / rerun timings: SERIES series of SLICES
16 x 16 CT slices each (one folder per series, explicit VR little endian), written once.

    gen_dicom_archive.py OUT [--series 500] [--slices 200]
"""
import argparse
import os
import sys

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


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
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        for k in range(a.slices):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientID = "CT", f"P{s:06d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.ImagePositionPatient = [0, 0, float(k)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
            ds.Rows, ds.Columns = 16, 16
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.PixelData = pixels
            ds.save_as(os.path.join(folder, f"IM{k:05d}.dcm"), enforce_file_format=True)
        if s % 50 == 0:
            print(f"  series {s}", file=sys.stderr)
    open(stamp, "w").close()


if __name__ == "__main__":
    main()
