#!/usr/bin/env python3
"""MONAI's usual CT chain, for `make bench-peers`: LoadImage, EnsureChannelFirst, the CT-RATE
metadata rescale (MONAI does not read it), Orientation RAS, Spacing 0.75 x 0.75 x 1.5 mm
(bilinear), ScaleIntensityRange [-1000, 1000] -> [-1, 1] clipped, ResizeWithPadOrCrop to
480 x 480 x 240, saved with `np.save` as float32.

    monai_chain.py --metadata CSV --out DIR [--workers N] FILE.nii.gz...
"""
import argparse
import csv
import os
from multiprocessing import Pool

import numpy as np
import torch
from monai.transforms import (Compose, EnsureChannelFirst, LoadImage, Orientation,
                              ResizeWithPadOrCrop, ScaleIntensityRange, Spacing)

META = {}
OUT = ""


def process(path):
    name = os.path.basename(path)
    row = META[name]
    slope, intercept = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst()])
    img = load(path)
    img = img * slope + intercept
    chain = Compose([
        Orientation(axcodes="RAS"),
        Spacing(pixdim=(0.75, 0.75, 1.5), mode="bilinear"),
        ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=-1.0, b_max=1.0, clip=True),
        ResizeWithPadOrCrop(spatial_size=(480, 480, 240)),
    ])
    out = chain(img)
    np.save(os.path.join(OUT, name.split(".")[0] + ".npy"), np.asarray(out[0], dtype=np.float32))
    return name


def init(meta, out):
    global META, OUT
    META, OUT = meta, out
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    with open(a.metadata, newline="") as f:
        meta = {r["VolumeName"]: r for r in csv.DictReader(f)}
    os.makedirs(a.out, exist_ok=True)
    if a.workers <= 1:
        init(meta, a.out)
        for p in a.files:
            process(p)
    else:
        with Pool(a.workers, initializer=init, initargs=(meta, a.out)) as pool:
            list(pool.imap_unordered(process, a.files))


if __name__ == "__main__":
    main()
