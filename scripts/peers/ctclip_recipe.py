#!/usr/bin/env python3
"""CT-CLIP's preprocessing recipe, re-implemented faithfully for `make bench-peers`.

Per volume, as CT-CLIP's data_preprocess script and its dataset loader do it: nibabel `get_fdata`
(float64), the CT-RATE metadata CSV's RescaleSlope/RescaleIntercept, transpose to (z, x, y),
`torch.nn.functional.interpolate(mode="trilinear", align_corners=False)` to
`int(n * current_spacing / target_spacing)` per axis (target 1.5 x 0.75 x 0.75 mm), clip to
[-1000, 1000] HU, divide by 1000, back to (x, y, z), centre crop / pad with -1 to 480 x 480 x 240,
and `np.save` as float32.

    ctclip_recipe.py --metadata CSV --out DIR [--workers N] FILE.nii.gz...

`--workers` runs files in a process pool (CT-CLIP's script uses multiprocessing.Pool), each worker
with one torch thread; `--workers 1` is one process, one thread.
"""
import os
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import main  # noqa: E402

TARGET_SPACING = (1.5, 0.75, 0.75)  # z, x, y
TARGET_SHAPE = (480, 480, 240)  # x, y, z
HU_MIN, HU_MAX = -1000, 1000

def resize_array(array, current_spacing, target_spacing):
    original_shape = array.shape[2:]
    scaling = [current_spacing[i] / target_spacing[i] for i in range(len(original_shape))]
    new_shape = [int(original_shape[i] * scaling[i]) for i in range(len(original_shape))]
    return F.interpolate(array, size=new_shape, mode="trilinear", align_corners=False).cpu().numpy()


def crop_pad(img, target):
    tensor = torch.tensor(img)
    h, w, d = tensor.shape
    dh, dw, dd = target
    h0, w0, d0 = max((h - dh) // 2, 0), max((w - dw) // 2, 0), max((d - dd) // 2, 0)
    tensor = tensor[h0:h0 + dh, w0:w0 + dw, d0:d0 + dd]
    ph, pw, pd = dh - tensor.size(0), dw - tensor.size(1), dd - tensor.size(2)
    pad = (pd // 2, pd - pd // 2, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(tensor, pad, value=-1).numpy()


def process(path, row, out):
    name = os.path.basename(path)
    slope, intercept = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
    xy = float(row["XYSpacing"][1:][:-2].split(",")[0])
    z = float(row["ZSpacing"])
    img = nib.load(path).get_fdata()
    img = slope * img + intercept
    img = img.transpose(2, 0, 1)
    tensor = torch.tensor(img).unsqueeze(0).unsqueeze(0)
    img = resize_array(tensor, (z, xy, xy), TARGET_SPACING)[0][0]
    img = np.clip(img, HU_MIN, HU_MAX) / 1000.0
    img = np.transpose(img, (1, 2, 0))
    img = crop_pad(img, TARGET_SHAPE).astype(np.float32)
    np.save(os.path.join(out, name.split(".")[0] + ".npy"), img)


if __name__ == "__main__":
    main(process, "CT-CLIP's preprocessing recipe")
