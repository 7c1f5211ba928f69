#!/usr/bin/env python3
"""Source files over MAX_FILE lines and functions over MAX_FN lines in crates/*/src (tests too with
--all). Exits 1 when any is found, so it can guard CI.

    scripts/code_size.py            # limits 1000 / 120
    scripts/code_size.py --all      # include tests/ and benches/

A function's length runs from its `fn` line to its closing brace; braces inside strings, chars and
comments are skipped by a small lexer.
"""
import pathlib
import re
import sys

MAX_FILE = 1000
MAX_FN = 120
FN = re.compile(r"^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def code_mask(text):
    """`text` with string, char and comment contents blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif re.match(r'(b?r)(#*)"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', text[i:])
            end = '"' + m.group(2)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    text = path.read_text()
    code = code_mask(text).split("\n")
    found = []
    for ln, line in enumerate(code):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for k in range(ln, len(code)):
            for ch in code[k]:
                if ch == "{":
                    depth, opened = depth + 1, True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not opened and depth == 0:
                    break  # a declaration without a body
            else:
                if opened and depth == 0:
                    found.append((m.group(7), ln + 1, k - ln + 1))
                    break
                continue
            break
    return found


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    dirs = ["src", "tests", "benches"] if "--all" in sys.argv else ["src"]
    bad = []
    for d in dirs:
        for p in sorted(root.glob(f"crates/*/{d}/**/*.rs")):
            rel = p.relative_to(root)
            n = len(p.read_text().split("\n"))
            if n > MAX_FILE:
                bad.append(f"{rel}: {n} lines (file)")
            for name, line, length in functions(p):
                if length > MAX_FN:
                    bad.append(f"{rel}:{line}: fn {name} {length} lines")
    print("\n".join(bad) if bad else f"no file over {MAX_FILE} lines, no function over {MAX_FN}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
