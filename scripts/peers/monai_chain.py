#!/usr/bin/env python3
"""MONAI's usual CT chain, for `make bench-peers`: LoadImage, EnsureChannelFirst, the CT-RATE
metadata rescale (MONAI does not read it), Orientation RAS, Spacing 0.75 x 0.75 x 1.5 mm
(bilinear), ScaleIntensityRange [-1000, 1000] -> [-1, 1] clipped, ResizeWithPadOrCrop to
480 x 480 x 240, saved with `np.save` as float32.

    monai_chain.py --metadata CSV --out DIR [--workers N] FILE.nii.gz...
"""
import os
import sys

import numpy as np
from monai.transforms import (Compose, EnsureChannelFirst, LoadImage, Orientation,
                              ResizeWithPadOrCrop, ScaleIntensityRange, Spacing)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import main  # noqa: E402


def process(path, row, out):
    name = os.path.basename(path)
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
    img = chain(img)
    np.save(os.path.join(out, name.split(".")[0] + ".npy"), np.asarray(img[0], dtype=np.float32))


if __name__ == "__main__":
    main(process, "MONAI's CT chain")
