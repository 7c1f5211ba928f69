#!/usr/bin/env python3
"""The architecture rules `make lint` enforces, over crates/*/src:

- no import cycle between the top-level modules (files) of a crate (a module's own submodules
  count as part of it); cargo already refuses cycles between crates;
- every [dependencies] entry of a crate is called from its sources (a crate linked for nothing);
- no source file over 1,000 lines and no function over 120 lines (a function runs from its `fn`
  line to its closing brace; braces in strings, chars and comments are skipped by a small lexer).

    scripts/arch_check.py         # exit 1 and a list when a rule is broken
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
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

# Dependencies used without being named in the sources, and why.
NOT_NAMED = {
    "torch-sys": "read by build.rs for libtorch's rpath",
    "dicom-transfer-syntax-registry": "its default features register the codecs dicom-pixeldata uses",
}
# (`stage_params!` derives serde's Deserialize in the crate that uses it.)


def top_module(src: pathlib.Path, f: pathlib.Path) -> str:
    rel = f.relative_to(src).with_suffix("")
    first = rel.parts[0]
    return "lib" if first in ("lib", "main") else first


def module_cycles(crate: pathlib.Path) -> list[str]:
    src = crate / "src"
    mods = {top_module(src, f) for f in src.rglob("*.rs")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for f in src.rglob("*.rs"):
        m = top_module(src, f)
        code = code_mask(f.read_text())
        for dep in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code):
            if dep in mods and dep != m and m != "lib":
                edges[m].add(dep)
        # `use crate::{a::x, b::y}` groups
        for group in re.findall(r"\buse crate::\{([^;]*)\}", code):
            for dep in re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)::", group):
                if dep in mods and dep != m and m != "lib":
                    edges[m].add(dep)
    cycles, state = [], {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])
    return [f"{crate.name}: module cycle {c}" for c in cycles]


def unused_dependencies(crate: pathlib.Path) -> list[str]:
    toml = (crate / "Cargo.toml").read_text()
    deps = re.search(r"^\[dependencies\]\n(.*?)(?=^\[|\Z)", toml, re.M | re.S)
    if not deps:
        return []
    names = re.findall(r"^([a-zA-Z0-9_-]+)\s*[.=]", deps.group(1), re.M)
    code = "\n".join(code_mask(f.read_text()) for f in (crate / "src").rglob("*.rs"))
    out = []
    for n in names:
        if n in NOT_NAMED or (n == "serde" and "stage_params!" in code):
            continue
        ident = n.replace("-", "_")
        if not re.search(r"\b" + ident + r"\b", code):
            out.append(f"{crate.name}: depends on {n} but never calls it")
    return out


def sizes(crate: pathlib.Path) -> list[str]:
    out = []
    for p in sorted((crate / "src").rglob("*.rs")):
        rel = p.relative_to(ROOT)
        n = len(p.read_text().split("\n"))
        if n > MAX_FILE:
            out.append(f"{rel}: {n} lines (file)")
        for name, line, length in functions(p):
            if length > MAX_FN:
                out.append(f"{rel}:{line}: fn {name} {length} lines")
    return out


def main() -> int:
    bad = []
    for crate in sorted(ROOT.glob("crates/*")):
        if (crate / "src").is_dir():
            bad += module_cycles(crate) + unused_dependencies(crate) + sizes(crate)
    if bad:
        print("\n".join(bad))
        return 1
    print(f"architecture: no module cycle, no unused dependency, no file over {MAX_FILE} lines, "
          f"no function over {MAX_FN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
