#!/usr/bin/env python3
"""medSpaCy as the peer of mg3d's report reader (run with .venv-medspacy/bin/python; `make medspacy`).

The pipeline is `medspacy.load()` as shipped: medSpaCy's tokenizer, PyRuSH sentence splitting, the
target matcher and ConText with its default English rules, with no downloaded spaCy model. The
target matcher gets the CT-RATE rules of medspacy_ctrate_rules.py; nothing else is changed.

  score FILE.jsonl... [--errors] [--json]
      Scores medSpaCy on annotated reports (tests/report-eval/*/*.jsonl; format in
      scripts/report_eval_validate.py) the way `mg3d report-eval` scores mg3d: each section is one
      document; per report and label the truth is the aggregate of the annotated mentions' assertions
      (hypothetical ones left out: present if any present, else uncertain if any uncertain, else
      absent if any absent, else unmentioned) and the prediction the same aggregate over the
      entities of that label, whose assertion is: hypothetical (ent._.is_hypothetical) -> left out;
      uncertain (is_uncertain) -> uncertain; negated (is_negated) -> absent; else present
      (historical counts as present). Prints the micro-F1 of "present" over the 18 labels, its
      precision and recall, the uncertain-only pairs found as uncertain, and per-label F1.

  run CSV [--limit N]
      Runs medSpaCy over Findings_EN and Impressions_EN of every row of a CT-RATE-format reports
      CSV on one thread (nlp.pipe, n_process=1) and prints the reports, entities and seconds since
      the script started (the caller times the whole process as well).
"""
import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

# The 18 labels, in one place (the validator of the annotated sets, plain Python).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from report_eval_validate import LABELS  # noqa: E402

SECTIONS = ("findings", "impression")


def build_nlp(quiet=True):
    """medspacy.load() with the CT-RATE target rules added to its target matcher."""
    if quiet:
        # PyRuSH >= 1.0.13 logs every sentence decision at DEBUG level through loguru, whose
        # default handler prints DEBUG to stderr; keep warnings and errors only. (Older PyRuSH
        # releases do not use loguru.)
        try:
            from loguru import logger
        except ImportError:
            pass
        else:
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
    import medspacy

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from medspacy_ctrate_rules import RULES

    nlp = medspacy.load()
    nlp.get_pipe("medspacy_target_matcher").add(RULES)
    return nlp


def assertion(ent):
    """present | uncertain | absent, or None for a hypothetical entity."""
    if ent._.is_hypothetical:
        return None
    if ent._.is_uncertain:
        return "uncertain"
    if ent._.is_negated:
        return "absent"
    return "present"


def aggregate(assertions):
    for a in ("present", "uncertain", "absent"):
        if a in assertions:
            return a
    return "unmentioned"


def f1(tp, fp, fn):
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def score(nlp, reports):
    s = {"reports": len(reports), "uncertain_only": 0, "uncertain_found": 0,
         "per_label": {l: {"positives": 0, "tp": 0, "fp": 0, "fn_": 0, "f1": 0.0} for l in LABELS},
         "errors": []}
    for r in reports:
        pred = []  # (label, assertion, why)
        for sec in SECTIONS:
            text = r["sections"].get(sec)
            if not text:
                continue
            for ent in nlp(text).ents:
                a = assertion(ent)
                if a is not None:
                    pred.append((ent.label_, a, f"{sec}: {ent.text!r} {a}"))
        for label in LABELS:
            truth = [m["assertion"] for m in r["mentions"]
                     if m["label"] == label and m["assertion"] != "hypothetical"]
            guessed = [p[1] for p in pred if p[0] == label]
            t, g = aggregate(truth), aggregate(guessed)
            c = s["per_label"][label]
            if t == "present" and g == "present":
                c["tp"] += 1
            elif g == "present":
                c["fp"] += 1
            elif t == "present":
                c["fn_"] += 1
            c["positives"] += t == "present"
            if t == "uncertain":
                s["uncertain_only"] += 1
                s["uncertain_found"] += g == "uncertain"
            if (t == "present") != (g == "present") or (t == "uncertain" and g != "uncertain"):
                spans = "; ".join(f"{m['section']}: {m['text']!r} {m['assertion']}"
                                  for m in r["mentions"] if m["label"] == label)
                why = "; ".join(p[2] for p in pred if p[0] == label)
                s["errors"].append(f"{r['id']} {label}: truth {t} [{spans}], predicted {g} [{why}]")
    tp = fp = fn = 0
    for c in s["per_label"].values():
        c["f1"] = f1(c["tp"], c["fp"], c["fn_"])
        tp, fp, fn = tp + c["tp"], fp + c["fp"], fn + c["fn_"]
    s["precision"] = tp / max(tp + fp, 1)
    s["recall"] = tp / max(tp + fn, 1)
    s["micro_f1"] = f1(tp, fp, fn)
    return s


def cmd_score(a):
    reports = []
    for path in a.files:
        with open(path, encoding="utf-8") as f:
            reports.extend(json.loads(line) for line in f if line.strip())
    s = score(build_nlp(), reports)
    if a.json:
        print(json.dumps(s, indent=2))
        return
    if a.errors:
        for e in s["errors"]:
            print(e)
    print(f"{s['reports']} reports: present micro-F1 {s['micro_f1']:.3f} (precision "
          f"{s['precision']:.3f}, recall {s['recall']:.3f}); uncertain-only found as uncertain "
          f"{s['uncertain_found']}/{s['uncertain_only']}")
    for label in sorted(s["per_label"]):  # the order of mg3d's table
        c = s["per_label"][label]
        print(f"  {label:<36} F1 {c['f1']:.3f}  positives {c['positives']:>3}  tp {c['tp']:>3} "
              f"fp {c['fp']:>3} fn {c['fn_']:>3}")


def cmd_run(a):
    csv.field_size_limit(sys.maxsize)
    with open(a.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if a.limit is not None:
        rows = rows[: a.limit]
    nlp = build_nlp()
    t_ready = time.perf_counter()
    texts = (row[col] or "" for row in rows for col in ("Findings_EN", "Impressions_EN"))
    entities = 0
    for doc in nlp.pipe(texts, n_process=1):
        entities += len(doc.ents)
    t = time.perf_counter()
    out = {"reports": len(rows), "entities": entities, "seconds": t - T0,
           "setup_seconds": t_ready - T0, "pipe_seconds": t - t_ready,
           "reports_per_s": len(rows) / (t - T0)}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['reports']} reports, {entities} entities, {out['seconds']:.2f} s since start "
              f"({out['reports_per_s']:.1f} reports/s; imports, CSV and pipeline "
              f"{out['setup_seconds']:.2f} s, nlp.pipe {out['pipe_seconds']:.2f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("score", help="score on annotated report sets")
    sp.add_argument("files", nargs="+")
    sp.add_argument("--errors", action="store_true", help="list every disagreement first")
    sp.add_argument("--json", action="store_true", help="print JSON")
    rp = sub.add_parser("run", help="time medSpaCy over a CT-RATE reports CSV")
    rp.add_argument("csv")
    rp.add_argument("--limit", type=int)
    rp.add_argument("--json", action="store_true", help="print JSON")
    a = ap.parse_args()
    {"score": cmd_score, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
