"""The command line the peer scripts share: `--metadata CSV --out DIR [--workers N] FILE...`; files
run in a process pool (as CT-CLIP's script does), each worker with one torch thread, or in this
process with `--workers 1`. `process(path, row, out)` handles one file given its metadata row."""
import argparse
import csv
import os
from multiprocessing import Pool

import torch

_STATE = {}


def _init(process, meta, out):
    _STATE.update(process=process, meta=meta, out=out)
    torch.set_num_threads(1)


def _one(path):
    _STATE["process"](path, _STATE["meta"][os.path.basename(path)], _STATE["out"])


def main(process, description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--metadata", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    with open(a.metadata, newline="") as f:
        meta = {r["VolumeName"]: r for r in csv.DictReader(f)}
    os.makedirs(a.out, exist_ok=True)
    if a.workers <= 1:
        _init(process, meta, a.out)
        for p in a.files:
            _one(p)
    else:
        with Pool(a.workers, initializer=_init, initargs=(process, meta, a.out)) as pool:
            list(pool.imap_unordered(_one, a.files))
