#!/usr/bin/env python3
"""Validates the independent report evaluation sets (tests/report-eval/*/*.jsonl).

Each line is one report:
  {"id": "uk-017", "style": "ctrate|us_structured|uk_free|followup",
   "sections": {"findings": "...", "impression": "..."},
   "mentions": [{"section": "findings", "text": "exact substring", "occurrence": 1,
                 "label": "<one of the 18 CT-RATE labels>",
                 "assertion": "present|absent|uncertain|hypothetical"}]}

`occurrence` is which occurrence (1-based) of `text` in that section the mention is. Checks every
field, that each mention's text occurs that often, ids are unique across the given files, and
prints counts per style, label and assertion. Exit 1 on the first file with errors (all errors of
it listed).

  scripts/report_eval_validate.py tests/report-eval/set1/*.jsonl
"""
import collections
import json
import sys

LABELS = [
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema",
    "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening",
]
STYLES = {"ctrate", "us_structured", "uk_free", "followup"}
ASSERTIONS = {"present", "absent", "uncertain", "hypothetical"}
SECTIONS = {"findings", "impression"}


def nth(hay, needle, n):
    """Byte-free character offset of the n-th (1-based) occurrence, or -1."""
    start = -1
    for _ in range(n):
        start = hay.find(needle, start + 1)
        if start < 0:
            return -1
    return start


def check(path, seen_ids, counts):
    errors = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{where}: not JSON: {e}")
                continue
            rid = r.get("id")
            if not isinstance(rid, str) or not rid:
                errors.append(f"{where}: no id")
            elif rid in seen_ids:
                errors.append(f"{where}: id {rid!r} also at {seen_ids[rid]}")
            else:
                seen_ids[rid] = where
            if r.get("style") not in STYLES:
                errors.append(f"{where}: style {r.get('style')!r} not in {sorted(STYLES)}")
            secs = r.get("sections")
            if not isinstance(secs, dict) or not secs or set(secs) - SECTIONS:
                errors.append(f"{where}: sections must be an object with findings and/or impression")
                continue
            if not any(isinstance(v, str) and v.strip() for v in secs.values()):
                errors.append(f"{where}: empty report")
            for i, m in enumerate(r.get("mentions", [])):
                mw = f"{where} mention {i + 1}"
                sec = m.get("section")
                if sec not in secs:
                    errors.append(f"{mw}: section {sec!r} not in the report")
                    continue
                if m.get("label") not in LABELS:
                    errors.append(f"{mw}: label {m.get('label')!r} is not a CT-RATE label")
                if m.get("assertion") not in ASSERTIONS:
                    errors.append(f"{mw}: assertion {m.get('assertion')!r} not in {sorted(ASSERTIONS)}")
                occ = m.get("occurrence", 1)
                text = m.get("text", "")
                if not isinstance(occ, int) or occ < 1 or not text:
                    errors.append(f"{mw}: needs text and occurrence >= 1")
                elif nth(secs[sec], text, occ) < 0:
                    errors.append(f"{mw}: {text!r} does not occur {occ} time(s) in {sec}")
                else:
                    counts["label"][m.get("label")] += 1
                    counts["assertion"][m.get("assertion")] += 1
            counts["style"][r.get("style")] += 1
    return errors


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    seen, counts = {}, collections.defaultdict(collections.Counter)
    bad = False
    for p in paths:
        errs = check(p, seen, counts)
        for e in errs:
            print(e, file=sys.stderr)
        bad |= bool(errs)
    print(f"{len(seen)} reports; styles {dict(counts['style'])}")
    print(f"mentions by assertion {dict(counts['assertion'])}")
    for label in LABELS:
        print(f"  {label:<36} {counts['label'][label]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
