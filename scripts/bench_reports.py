#!/usr/bin/env python3
"""mg3d's report reading beside medSpaCy (part of `make bench-peers`).

Quality: both read the project's independently written, annotated reports (tests/report-eval/: set1
and the later check set) and are scored the same way (`mg3d report-eval`,
scripts/peers/medspacy_reports.py score): micro-F1 of "present" over the 18 CT-RATE labels,
uncertain-only findings found as uncertain, the weakest label.

Speed: the same generated CT-RATE-format reports CSV (`mg3d synth --reports-only N`, default
10,000) and the annotated reports' texts as a CSV, each read by one whole process on one thread:
mg3d `run` of a reports + entities pipeline (threads = 1, a fresh work dir: no cached item) and
medSpaCy's `run` (tokenizer, PyRuSH sentences, target rules, ConText). Reports/s counts the whole
process, start-up included (the median of 3 runs; medSpaCy's 10,000 once); the ratio is mg3d over
medSpaCy.

  scripts/bench_reports.py --mg3d target/release/mg3d [--reports 10000] [--json-out FILE]
"""
import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEDSPACY = os.path.join(ROOT, ".venv-medspacy", "bin", "python")
PEER = os.path.join(ROOT, "scripts", "peers", "medspacy_reports.py")
SETS = {
    "set1": sorted(glob.glob(os.path.join(ROOT, "tests", "report-eval", "set1", "*.jsonl"))),
    "check": [os.path.join(ROOT, "tests", "report-eval", "check", "reports.jsonl")],
}


def timed(cmd, cwd=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return secs, p.stdout


def annotated_csv(path):
    """The annotated reports' texts as a CT-RATE-format CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        n = 0
        for files in SETS.values():
            for fn in files:
                for line in open(fn, encoding="utf-8"):
                    if line.strip():
                        r = json.loads(line)
                        s = r["sections"]
                        w.writerow([r["id"], "", "", s.get("findings", ""), s.get("impression", "")])
                        n += 1
    return n


def median_of(runs, fn):
    """The median of `runs` timings of `fn` (the first run also warms the page cache)."""
    t = sorted(fn() for _ in range(runs))
    return t[len(t) // 2]


def mg3d_speed(mg3d, csv_path, work):
    """One cold mg3d process (a fresh work dir: no cached item) over `csv_path`."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    pipe = os.path.join(work, "text.toml")
    with open(pipe, "w") as f:
        f.write(
            f'[pipeline]\nname = "bench-text"\nwork_dir = "{work}/w"\nsalt = "bench-salt-0123456789"\nthreads = 1\n'
            f'[stages.reports]\nkind = "reports"\nparams = {{ files = ["{csv_path}"] }}\n'
            '[stages.entities]\nkind = "entities"\ninputs = ["reports"]\n'
        )
    secs, _ = timed([mg3d, "run", pipe, "--quiet"])
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mg3d", default=os.path.join(ROOT, "target", "release", "mg3d"))
    ap.add_argument("--reports", type=int, default=10000)
    ap.add_argument("--work", default=os.path.join(ROOT, "work", "bench-reports"))
    ap.add_argument("--json-out", default="")
    a = ap.parse_args()
    if not os.path.exists(MEDSPACY):
        sys.exit("no .venv-medspacy: run `make medspacy`")
    os.makedirs(a.work, exist_ok=True)
    results = {"mg3d": a.mg3d, "quality": {}, "speed": {}}

    print("quality (present micro-F1 over the 18 CT-RATE labels; uncertain-only found; weakest label F1 with >= 5 positives)")
    for name, files in SETS.items():
        row = {}
        _, out = timed([a.mg3d, "--json", "report-eval", *files])
        row["mg3d"] = json.loads(out)
        _, out = timed([MEDSPACY, PEER, "score", "--json", *files])
        row["medspacy"] = json.loads(out)
        for tool in ("mg3d", "medspacy"):
            s = row[tool]
            weakest = min(
                ((c["f1"], label) for label, c in s["per_label"].items() if c["positives"] >= 5),
                default=(float("nan"), "-"),
            )
            print(
                f"  {name:<6} {tool:<9} F1 {s['micro_f1']:.3f} (P {s['precision']:.3f}, R {s['recall']:.3f}); "
                f"uncertain {s['uncertain_found']}/{s['uncertain_only']}; weakest {weakest[1]} {weakest[0]:.3f}"
            )
        results["quality"][name] = {t: {k: row[t][k] for k in ("micro_f1", "precision", "recall", "uncertain_found", "uncertain_only")} for t in row}

    gen = os.path.join(a.work, f"generated-{a.reports}")
    csv_gen = os.path.join(gen, "reports.csv")
    if not os.path.exists(csv_gen):
        shutil.rmtree(gen, ignore_errors=True)
        timed([a.mg3d, "synth", "--reports-only", str(a.reports), "--seed", "7", "--out", gen])
    csv_ann = os.path.join(a.work, "annotated.csv")
    n_ann = annotated_csv(csv_ann)
    print("speed (whole process, one thread, start-up included)")
    for name, path, n in (("generated", csv_gen, a.reports), ("annotated", csv_ann, n_ann)):
        m = median_of(3, lambda: mg3d_speed(a.mg3d, path, os.path.join(a.work, "mg3d-" + name)))
        # medSpaCy takes minutes on the generated set: the median of 3 only on the small one.
        p = median_of(1 if n > 1000 else 3, lambda: timed([MEDSPACY, PEER, "run", path])[0])
        print(
            f"  {name:<10} {n:>6} reports: mg3d {m:7.2f} s ({n / m:8.0f}/s)  medSpaCy {p:7.2f} s ({n / p:6.1f}/s)  ratio {p / m:6.1f}x"
        )
        results["speed"][name] = {"reports": n, "mg3d_s": m, "medspacy_s": p, "ratio": p / m}
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
