#!/usr/bin/env python3
"""`make bench-peers`: mg3d's volume path side by side with its peers, on the same files, in one run.

Generates (once, cached under the data folder) CT-like 512 x 512 x 300 int16 volumes at
0.7 x 0.7 x 1.0 mm: NIfTI files with a CT-RATE metadata CSV (stored values, RescaleIntercept
-1024), and the first of them again as a 300-file DICOM series. Then, at one worker/thread and at
all cores, on the same files:

- mg3d: ingest + preprocess (`mg3d run`, cold caches) with the `ct-clip` and `mg3d` presets;
- CT-CLIP's recipe (scripts/peers/ctclip_recipe.py), MONAI's chain (scripts/peers/monai_chain.py);
- on the DICOM series: mg3d's ingest, ingest + preprocess, and `dcm2niix -z y`;
- the machine's limit: inflating the inputs once (ISA-L, the fastest inflater at hand), and writing
  mg3d's outputs' bytes once.

Each run is one process tree, timed by wall clock; its peak memory is the largest sum of the
resident sizes of the tree's processes, sampled every 20 ms. Prints volumes/s, peak memory and the
ratios the issue asks for, and writes the same as JSON (--json-out).

    bench_peers.py [--data DIR] [--work DIR] [--volumes 4] [--mg3d target/debug/mg3d]
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = (512, 512, 300)
SPACING = (0.7, 0.7, 1.0)
INTERCEPT = -1024
GENERATOR_VERSION = "1"


# ------------------------------------------------------------------------------------------ data

def phantom(seed):
    """A chest-like volume in HU (int16): air, a body ellipse with fat and muscle, two lungs with
    vessels, a spine and a heart, shifted per seed, with scanner-like noise."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = DIMS
    x = (np.arange(nx, dtype=np.float32) - nx / 2) * SPACING[0]
    y = (np.arange(ny, dtype=np.float32) - ny / 2) * SPACING[1]
    z = (np.arange(nz, dtype=np.float32) - nz / 2) * SPACING[2]
    dx, dy = rng.uniform(-10, 10, 2)
    X, Y = np.meshgrid(x - dx, y - dy, indexing="ij")
    body = (X / 160) ** 2 + (Y / 115) ** 2 <= 1
    inner = (X / 150) ** 2 + (Y / 105) ** 2 <= 1
    lung_l = ((X - 70) / 55) ** 2 + ((Y + 5) / 75) ** 2 <= 1
    lung_r = ((X + 70) / 55) ** 2 + ((Y + 5) / 75) ** 2 <= 1
    spine = (X / 18) ** 2 + ((Y - 80) / 18) ** 2 <= 1
    heart = ((X + 10) / 45) ** 2 + ((Y + 20) / 40) ** 2 <= 1
    out = np.empty(DIMS, dtype=np.int16)
    for k in range(nz):
        zz = z[k]
        sl = np.full((nx, ny), -1000, dtype=np.int16)
        sl[body] = -100  # fat
        sl[inner] = 40  # muscle / soft tissue
        lung_extent = abs(zz) < 130
        if lung_extent:
            sl[lung_l | lung_r] = -850
            vessels = (np.sin(X / 6 + zz / 9) * np.cos(Y / 7 - zz / 11) > 0.93) & (lung_l | lung_r)
            sl[vessels] = 30
        if abs(zz) < 60:
            sl[heart] = 45
        sl[spine] = 700
        out[:, :, k] = sl
    noise = rng.integers(-18, 19, size=DIMS, dtype=np.int16)
    out += noise
    out[out < -1024] = -1024
    return out


def affine():
    # LPS-ordered voxel axes, as CT-RATE's files: i -> left, j -> posterior, k -> superior.
    a = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    a[:3, 3] = [180.0, 180.0, -150.0]
    return a


def generate(data, n):
    import nibabel as nib

    stamp = os.path.join(data, f".generated-v{GENERATOR_VERSION}-n{n}")
    if os.path.exists(stamp):
        return
    shutil.rmtree(data, ignore_errors=True)
    nifti = os.path.join(data, "nifti")
    os.makedirs(nifti)
    rows = []
    for i in range(n):
        name = f"train_{i + 1}_a_1.nii.gz"
        hu = phantom(i)
        stored = (hu.astype(np.int32) - INTERCEPT).astype(np.int16)
        img = nib.Nifti1Image(stored, affine())
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, os.path.join(nifti, name))
        rows.append({
            "VolumeName": name, "Manufacturer": "bench", "ManufacturerModelName": "phantom",
            "PatientSex": "F", "PatientAge": "060Y", "Rows": DIMS[1], "Columns": DIMS[0],
            "SliceThickness": SPACING[2], "XYSpacing": f"[{SPACING[0]}, {SPACING[1]}]",
            "ZSpacing": SPACING[2], "RescaleIntercept": INTERCEPT, "RescaleSlope": 1,
            "RescaleType": "HU", "NumberofSlices": DIMS[2], "PatientPosition": "HFS",
        })
        if i == 0:
            write_dicom(os.path.join(data, "dicom", "series0"), stored)
        print(f"  generated {name}", file=sys.stderr)
    with open(os.path.join(data, "metadata.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    open(stamp, "w").close()


def write_dicom(folder, stored):
    """The volume as a CT series, one uncompressed file per slice (explicit VR little endian)."""
    from pydicom.uid import generate_uid

    from gen_dicom_archive import ct_slice

    os.makedirs(folder)
    uids = (generate_uid(), generate_uid(), generate_uid())
    a = affine()
    for k in range(stored.shape[2]):
        # DICOM is LPS, the NIfTI affine RAS: flip x and y. Rows run along j (posterior), columns
        # along i (left).
        pos = a @ np.array([0, 0, k, 1.0])
        ds = ct_slice(uids, k, (-pos[0], -pos[1], pos[2]),
                      np.ascontiguousarray(stored[:, :, k].T).tobytes(),
                      (stored.shape[1], stored.shape[0]), (SPACING[1], SPACING[0], SPACING[2]),
                      "BENCH0001", INTERCEPT)
        ds.save_as(os.path.join(folder, f"IM{k + 1:04d}.dcm"), enforce_file_format=True)


# ----------------------------------------------------------------------------------- measuring

def tree_rss(pid):
    """Resident bytes of `pid` and its descendants."""
    children = {}
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    stack = [pid]
    while stack:
        q = stack.pop()
        try:
            with open(f"/proc/{q}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(q, []))
    return total


def measure(cmd, env=None, cwd=None):
    """Runs `cmd`; returns (wall seconds, peak tree RSS bytes). Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss(p.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.decode(errors='replace')[-3000:]}")
    return wall, peak[0]


def mg3d_pipeline(work, threads, stages):
    text = (
        f'[pipeline]\nname = "bench-peers"\nwork_dir = "{work}"\n'
        f'salt = "bench-peers-salt-0123456789"\nthreads = {threads}\n'
    )
    for name, body in stages:
        text += f"[stages.{name}]\n{body}\n"
    path = work + ".toml"
    with open(path, "w") as f:
        f.write(text)
    return path


def inflate_all(files):
    """Inflates every file once with the fastest inflater at hand: ISA-L (the `isal` package of
    requirements.txt), else zlib. Returns its name."""
    try:
        from isal import igzip

        for p in files:
            with open(p, "rb") as f:
                igzip.decompress(f.read())
        return "ISA-L"
    except ImportError:
        for p in files:
            d = zlib.decompressobj(zlib.MAX_WBITS | 16)
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    d.decompress(chunk)
        return "zlib"


def write_bytes(files, dst):
    os.makedirs(dst, exist_ok=True)
    blobs = [open(f, "rb").read() for f in files]
    t0 = time.perf_counter()
    for i, b in enumerate(blobs):
        with open(os.path.join(dst, f"{i}.bin"), "wb") as f:
            f.write(b)
    return time.perf_counter() - t0


def compare_with_recipe(work, first):
    """Mean |difference| (HU) between mg3d's ct-clip output and the recipe's for one volume, over
    the voxels both fill with tissue (the recipe's grid is `int(n * 0.7 / 0.75)` voxels, mg3d's
    keeps the extent, so the two grids differ by under a voxel), and how many are within 25 HU."""
    import nibabel as nib

    name = os.path.basename(first).split(".")[0]
    ours_dir = os.path.join(work, "mg3d-ct-clip-t1", "preprocess", "volumes")
    theirs = os.path.join(work, "ctclip-t1", name + ".npy")
    if not (os.path.isdir(ours_dir) and os.path.exists(theirs)):
        return None
    files = sorted(os.listdir(ours_dir))
    if len(files) == 0:
        return None
    # mg3d names volumes by pseudonym: compare with each and keep the best match.
    ref = np.load(theirs).astype(np.float32) * 1000.0  # HU, source voxel order (L, P, S here)
    best = None
    for f in files:
        img = nib.load(os.path.join(ours_dir, f))
        ours = np.asarray(img.dataobj, dtype=np.float32)[::-1, ::-1, :]  # RAS -> the source's LPS
        if ours.shape != ref.shape:
            continue
        both = (ours > -990) & (ref > -990)
        mae = float(np.abs(ours[both] - ref[both]).mean()) if both.any() else float("inf")
        close = float((np.abs(ours[both] - ref[both]) <= 25).mean()) if both.any() else 0.0
        if best is None or mae < best["mae_hu"]:
            best = {"mae_hu": round(mae, 2), "within_25_hu": round(close, 4)}
    return best


# ------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "work", "bench-peers", "data"))
    ap.add_argument("--work", default=os.path.join(ROOT, "work", "bench-peers", "runs"))
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--mg3d", default=os.path.join(ROOT, "target", "debug", "mg3d"))
    ap.add_argument("--skip", default="", help="comma-separated runs to skip: monai,dcm2niix,mg3d-preset")
    ap.add_argument("--json-out", default="")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    cores = os.cpu_count() or 1
    py = sys.executable

    generate(a.data, a.volumes)
    nifti = sorted(os.path.join(a.data, "nifti", f) for f in os.listdir(os.path.join(a.data, "nifti")))
    meta = os.path.join(a.data, "metadata.csv")
    dicom = os.path.join(a.data, "dicom")
    n = len(nifti)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    results = []

    def run(tool, dataset, threads, cmd, volumes, env=None):
        wall, peak = measure(cmd, env=env)
        r = {"tool": tool, "data": dataset, "threads": threads, "seconds": round(wall, 3),
             "volumes_per_s": round(volumes / wall, 4), "peak_mb": round(peak / 2**20)}
        results.append(r)
        print(f"  {tool:<28} {dataset:<6} t{threads}  {wall:7.2f} s  {r['volumes_per_s']:7.3f} vol/s"
              f"  peak {r['peak_mb']:6d} MB", file=sys.stderr)
        return r

    env1 = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for threads in (1, cores):
        ingest = (f'kind = "ingest"\nparams = {{ nifti_roots = ["{a.data}/nifti"], '
                  f'ctrate_metadata = ["{meta}"] }}')
        presets = ["ct-clip"] + ([] if "mg3d-preset" in skip else ["mg3d"])
        for preset in presets:
            work = os.path.join(a.work, f"mg3d-{preset}-t{threads}")
            toml = mg3d_pipeline(work, threads, [
                ("ingest", ingest),
                ("preprocess", f'kind = "preprocess"\ninputs = ["ingest"]\nparams = {{ preset = "{preset}" }}'),
            ])
            run(f"mg3d {preset}", "nifti", threads, [a.mg3d, "run", toml, "--quiet"], n)
        out = os.path.join(a.work, f"ctclip-t{threads}")
        run("CT-CLIP recipe", "nifti", threads,
            [py, os.path.join(ROOT, "scripts/peers/ctclip_recipe.py"), "--metadata", meta,
             "--out", out, "--workers", str(threads)] + nifti, n, env=env1)
        if "monai" not in skip:
            out = os.path.join(a.work, f"monai-t{threads}")
            run("MONAI chain", "nifti", threads,
                [py, os.path.join(ROOT, "scripts/peers/monai_chain.py"), "--metadata", meta,
                 "--out", out, "--workers", str(threads)] + nifti, n, env=env1)
        # The DICOM series.
        work = os.path.join(a.work, f"mg3d-dicom-t{threads}")
        toml = mg3d_pipeline(work, threads, [("ingest", f'kind = "ingest"\nparams = {{ dicom_roots = ["{dicom}"] }}')])
        run("mg3d ingest", "dicom", threads, [a.mg3d, "run", toml, "--quiet"], 1)
        work = os.path.join(a.work, f"mg3d-dicom-pre-t{threads}")
        toml = mg3d_pipeline(work, threads, [
            ("ingest", f'kind = "ingest"\nparams = {{ dicom_roots = ["{dicom}"] }}'),
            ("preprocess", 'kind = "preprocess"\ninputs = ["ingest"]\nparams = { preset = "ct-clip" }'),
        ])
        run("mg3d ingest+preprocess", "dicom", threads, [a.mg3d, "run", toml, "--quiet"], 1)
        if "dcm2niix" not in skip and shutil.which("dcm2niix") and threads == 1:
            out = os.path.join(a.work, "dcm2niix")
            os.makedirs(out)
            run("dcm2niix -z y", "dicom", 1, ["dcm2niix", "-z", "y", "-o", out, os.path.join(dicom, "series0")], 1)

    # The machine's limit: inflate every input once; write the bytes of mg3d's outputs once.
    t0 = time.perf_counter()
    inflater = inflate_all(nifti)
    t_inflate = time.perf_counter() - t0
    outs = []
    pre = os.path.join(a.work, "mg3d-ct-clip-t1", "preprocess", "volumes")
    if os.path.isdir(pre):
        outs = [os.path.join(pre, f) for f in sorted(os.listdir(pre))]
    t_write = write_bytes(outs, os.path.join(a.work, "limit-write"))
    limit = t_inflate + t_write
    print(f"  limit: inflate ({inflater}) {t_inflate:.2f} s + write outputs {t_write:.2f} s (1 thread)",
          file=sys.stderr)

    agreement = compare_with_recipe(a.work, nifti[0])
    if agreement:
        print(f"  agreement with the CT-CLIP recipe on {os.path.basename(nifti[0])}: {agreement}",
              file=sys.stderr)

    def get(tool, data, threads):
        return next((r for r in results if r["tool"] == tool and r["data"] == data and r["threads"] == threads), None)

    lines = ["| run | data | threads | s | volumes/s | peak MB | vs CT-CLIP recipe |", "|---|---|---|---|---|---|---|"]
    for r in results:
        peer = get("CT-CLIP recipe", "nifti", r["threads"]) if r["data"] == "nifti" else get("dcm2niix -z y", "dicom", 1)
        ratio = f"{r['volumes_per_s'] / peer['volumes_per_s']:.2f}x" if peer else ""
        if r["data"] == "dicom":
            ratio = f"{ratio} (vs dcm2niix)" if peer else ""
        lines.append(f"| {r['tool']} | {r['data']} | {r['threads']} | {r['seconds']:.2f} | "
                     f"{r['volumes_per_s']:.3f} | {r['peak_mb']} | {ratio} |")
    lines.append(f"| limit: inflate inputs + write outputs | nifti | 1 | {limit:.2f} | {n / limit:.3f} | | |")
    summary = {}
    m1, mc = get("mg3d ct-clip", "nifti", 1), get("mg3d ct-clip", "nifti", cores)
    c1, cc = get("CT-CLIP recipe", "nifti", 1), get("CT-CLIP recipe", "nifti", cores)
    if m1 and mc and c1 and cc:
        summary = {
            "ctclip_all_cores_ratio": mc["volumes_per_s"] / cc["volumes_per_s"],
            "ctclip_one_thread_ratio": m1["volumes_per_s"] / c1["volumes_per_s"],
            "peak_mb_mg3d_vs_recipe": [max(m1["peak_mb"], mc["peak_mb"]), min(c1["peak_mb"], cc["peak_mb"])],
            "mg3d_vs_limit": mc["seconds"] / limit,
        }
    d, dd = get("mg3d ingest", "dicom", cores), get("dcm2niix -z y", "dicom", 1)
    if d and dd:
        summary["dcm2niix_ratio"] = d["volumes_per_s"] / dd["volumes_per_s"]
        summary["dcm2niix_peak_ratio"] = d["peak_mb"] / max(dd["peak_mb"], 1)
    print("\n".join(lines))
    print()
    for k, v in summary.items():
        print(f"{k}: {v if isinstance(v, list) else round(v, 2)}")
    if agreement:
        print(f"agreement with the CT-CLIP recipe: {agreement}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"results": results, "limit_seconds": limit, "summary": summary,
                       "agreement": agreement}, f, indent=1)


if __name__ == "__main__":
    main()
