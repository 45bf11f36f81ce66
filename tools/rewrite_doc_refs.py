#!/usr/bin/env python3
"""Rewrite references to the old out-of-repository notes into references to ``docs/``.

The code, configs, tests, benchmark READMEs and README once cited design notes that lived outside
the repository (``PAPER.md``, ``DESIGN.md``, ``KERNELS.md``, ``CALIBRATION.md``, ``ECOSYSTEM.md``,
``ANCHORS.md``, ``../shared/docs/``). This script replaces each such reference, with its section,
by the ``docs/<page>.md §<n>`` section that covers what the citing sentence says.

    python tools/rewrite_doc_refs.py [ROOT]            # rewrite in place (ROOT: the repository)
    python tools/rewrite_doc_refs.py --check [ROOT]    # change nothing; exit 1 if anything would change

It is idempotent (a second run changes nothing), it checks that every section it writes exists as
a numbered heading in ``docs/``, and it exits 1 listing every reference it could not map (file,
line, text) — add a rule below for those and run it again.

Rules are tried in order: first ``PHRASES``, sentence-specific rewrites where the same old
section means different things in different places (or where the sentence must be reworded),
then the generic per-section tables (``SECTIONS``), which also catch references added later.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

OLD_DOCS = ("PAPER", "DESIGN", "KERNELS", "CALIBRATION", "ECOSYSTEM", "ANCHORS")
# Anything matching this after the rewrite is a reference the rules missed.
LEFTOVER = re.compile(r"(?:PAPER|DESIGN|KERNELS|CALIBRATION|ECOSYSTEM|ANCHORS)\.md|shared/docs|\.\./shared"
                      r"|kernel_bench\.py")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "node_modules"}
SELF = Path(__file__).resolve()

M, A, K, C, D = "docs/method.md", "docs/architecture.md", "docs/kernels.md", "docs/training-on-cpu.md", "docs/data.md"

# Old page -> new page when cited without a section, or as a path.
PAGES = {"PAPER": M, "DESIGN": A, "KERNELS": K, "CALIBRATION": C, "ECOSYSTEM": D}

# Old section -> (new page, new section). Ranges ("2.3–2.4") are looked up whole first.
SECTIONS = {
    "PAPER": {  # the method, and the paper's models, setup, results and figures
        "1": (M, "1"), "2": (M, "3"), "2.1": (M, "3"), "2.2": (M, "3"), "2.3": (M, "4"), "2.4": (M, "4"),
        "2.3–2.4": (M, "4"), "2.5": (M, "6"), "2.6": (M, "9"), "3": (M, "11"), "3.1": (M, "11"),
        "3.2": (M, "11"), "4": (M, "10"), "5": (M, "7"), "6": (M, "15"), "6–7": (M, "15–16"), "7": (M, "16"),
        "8": (M, "17"), "9": (M, "18"), "10": (M, "6"), "11": (M, "8"),
    },
    "KERNELS": {  # the BSR format, kernels, measurement and roofline
        "1": (K, "12"), "2": (K, "9"), "2–3": (K, "9"), "3": (K, "9"), "4": (K, "8"), "4.1": (K, "8"),
        "4.2": (K, "12"), "4.3": (K, "12"), "4.4": (K, "12"), "5": (K, "5"), "6": (K, "10"), "7": (K, "6"),
        "8": (K, "12"),
    },
    "CALIBRATION": {  # CPU training
        "1": (D, "1"), "2": (D, "3"), "3": (C, "3"), "4": (C, "9"), "5": (C, "8"),
    },
    "ECOSYSTEM": {  # offline data
        "1": (D, "1"), "1.1": (D, "1"), "1.2": (D, "1"), "1.3": (D, "2"), "2": (D, "4"), "3": (D, "3"),
    },
}
# DESIGN.md's numbered conventions ("rule 9", "convention 7", "conventions 4–5").
CONVENTIONS = {
    1: (M, "6"),    # block math is pure
    2: (M, "3"),    # schedules are pure functions of the step
    3: (M, "2"),    # a sparsity method is a small object
    4: (M, "8"),    # masks keyed by name, applied in place, also to optimizer state
    5: (M, "6"),    # recurrent weights are gate-aware
    6: (A, "11"),   # models return lengths
    7: (A, "5"),    # one visible training loop; checkpoints
    8: (A, "4"),    # configuration
    9: (K, "3"),    # kernels behind a registry, tested against a slow reference
    10: (A, "7"),   # benchmarks write rows; plots read files
    11: (A, "10"),  # names
    12: (A, "8"),   # errors are for people
    13: (A, "9"),   # tests
}
# Unnumbered DESIGN.md parts cited by name.
DESIGN_NAMED = {"import rule": (A, "3"), '"flow of data"': (A, "1"), "layout": (A, "2")}
# A page cited without a section: the section that is meant in the code's usage.
BARE = {"CALIBRATION": (C, "3")}

# Sentence-specific rewrites, tried before the tables. Patterns are regular expressions; \s+
# lets a phrase match across a re-wrapped line. Group references keep the original line breaks.
PHRASES: list[tuple[str, str]] = [
    # bsrnn/inference/rnn.py: the models, the speed-up figures, and the runtime's fused gate update
    (r"PAPER\.md §6 models, §9 figures 5–6", f"{M} §15 models, §18 figures 5–6"),
    (r"KERNELS\.md §8 \"fused gates\"", f"{K} §7 \"fused gates\""),
    # bsrnn/train/distributed.py: the paper's data and scale
    (r"(2,100 hours of speech with many GPUs\s+)\(PAPER\.md §6\)", rf"\1({M} §16)"),
    # bsrnn/sparsity/blocks.py: the block scores the paper lists as future work
    (r"\(§10 of PAPER\.md: mean, RMS, geometric mean, median\)", f"({M} §6: mean, RMS, geometric mean, median)"),
    # bsrnn/sparsity/methods.py: GL's final block threshold
    (r"the final block threshold PAPER\.md §3 calls for", f"the final block threshold of {M} §11"),
    # the cpu kernel (C++): the fast path of docs/kernels.md §4
    (r"KERNELS\.md §5, §8", f"{K} §4"),
    # bsrnn/inference/kernels/baselines.py and __init__.py: the baselines' names
    (r"KERNELS\.md §4\.1 method names", f"method names as in {K} §6"),
    (r"(faster than int64,\s+)§6\)", r"\1§10)"),  # its bare §6 meant the pitfalls
    # bsrnn/inference/kernels/__init__.py: the Y = W·X convention
    (r"KERNELS\.md's convention", f"the convention of {K} §1"),
    # bsrnn/inference/kernels/cpu.py
    (r"(BB-way dot products; unsigned indices,\s+)§6\)", r"\1§10)"),  # bare §6 after a §5 reference
    (r"-{16}( numba )\(§5\)", rf"\1({K} §5)"),  # a ruler comment: as many dashes fewer as it gains
    (r"numba \(§5\)", f"numba ({K} §5)"),
    (r"KERNELS\.md §5 as published", f"The kernel of {K} §5"),
    # the BSR byte count (the export's layout; tests/inference/test_bench.py)
    (r"the layout KERNELS\.md §2 counts bytes for", f"the layout whose bytes {K} §2 counts"),
    (r"KERNELS\.md §2: BSR bytes", f"{K} §2: BSR bytes"),
    # bsrnn/bench/kernels.py: the reference numba kernel, its batch tile picked by pre-timing
    (r"the KERNELS\.md §5 numba kernel \(its best batch tile chosen by pre-timing, as(\s+)the reference script does\)",
     rf"the reference numba kernel of {K} §5 (its best batch tile chosen by\1pre-timing)"),
    (r"the KERNELS\.md §5 numba kernel", f"the reference numba kernel of {K} §5"),
    (r"# the reference script's pre-timing", f"# pre-timing picks the tile ({K} §5)"),
    # README: the kernel benchmark's anchor
    (r"the KERNELS\.md reference numba kernel", f"the reference numba kernel of {K} §5"),
    # benchmarks/kernels/README.md
    (r", not the(\s+)AMD Zen 5 guest of KERNELS\.md, so absolute times and limits differ from that file\.",
     rf";\1the CPU model differs between sessions ({K} §11), so compare absolute times only\nwithin one run."),
    (r"`numba_ref` is KERNELS\.md §5's numba kernel re-implemented as published \(batch tile picked by(\s+)"
     r"pre-timing, as in `kernel_bench\.py`\)",
     rf"`numba_ref` is the reference numba kernel of {K} §5 (its batch tile picked by\1pre-timing)"),
    # CPU training: threads and parallel runs (docs/training-on-cpu.md §4)
    (r"throughput of one 2-thread run \(CALIBRATION\.md §3\)", f"throughput of one 2-thread run ({C} §4)"),
    (r"CALIBRATION\.md §3 found two 1-thread runs as fast as one 2-thread run",
     f"{C} §4 measured two 1-thread runs at least as fast as one 2-thread run"),
    # CPU training: what runs cost (§7)
    (r"Sized by CALIBRATION\.md to take about 20 minutes on 2 cores\.",
     f"Sized to take about 20 minutes on 2 cores ({C} §7)."),
    (r"\(CALIBRATION\.md: more data beats more epochs at equal compute\)",
     f"({C} §7: more data beats more epochs at equal compute)"),
    # bsrnn/train/loop.py: why the CPU recipe uses Adam (the old note's claim is not a committed measurement)
    (r"on CPUs Adam with warm-up and step(\s+)decay learns much faster \(CALIBRATION\.md §3\)",
     rf"on CPUs the recipe uses Adam with warm-up and step\1decay ({C} §3 says why)"),
    # CPU training: the recipe and the presets (§3)
    (r"# CALIBRATION\.md's recipe:", f"# The CPU recipe of {C} §3:"),
    (r"with CALIBRATION\.md's recipe", f"with the CPU recipe of {C} §3"),
    (r"\(CALIBRATION\.md's model\)", f"(the CPU preset gru256, {C} §3)"),
    (r"\(CALIBRATION\.md's GRU 3×256 speech(\s+)model,", rf"(the GRU 3×256 CPU speech\1model of {C} §3,"),
    (r"\(default: gru256, CALIBRATION\.md\)", f"(default: gru256, {C} §3)"),
    (r"CPU presets \(CALIBRATION\.md\)", f"CPU presets ({C} §3)"),
    # tests/lm/test_lm_train.py: "the paper §5" meant the old notes' section on what is pruned
    (r"\(paper §5\)", f"({M} §7)"),
    # README: the layout
    (r"`(?:\.\./)?shared/docs/DESIGN\.md`", f"`{A}`"),
]

SEC = r"\d+(?:\.\d+)?(?:[–-]\d+(?:\.\d+)?)?"
DOC = r"(?P<doc>" + "|".join(OLD_DOCS) + r")\.md"
GENERIC = re.compile(
    r"(?P<path>(?:\.\./)?shared/docs/)?" + DOC
    + r"(?:(?P<secs> §" + SEC + r"(?:, §" + SEC + r")*)"
    + r"|(?P<conv> (?:rules?|conventions?) \d+(?:[–-]\d+)?)"
    + r"|(?P<named> import rule| \"flow of data\"| layout))?")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)\. ", re.M)
CITATION = re.compile(r"(docs/[a-z-]+\.md) (§\d+(?:[–-]\d+)?(?:, §\d+(?:[–-]\d+)?)*)")


class Unmapped(Exception):
    pass


def _join(cites: list[tuple[str, str]]) -> str:
    """[(page, sec), ...] -> 'page §a, §b' (one page) or 'page1 §a and page2 §b'."""
    out: list[str] = []
    for page in dict.fromkeys(p for p, _ in cites):
        secs = list(dict.fromkeys(s for p, s in cites if p == page))
        secs.sort(key=lambda s: [int(x) for x in re.split(r"[–.-]", s)])
        out.append(f"{page} " + ", ".join(f"§{s}" for s in secs))
    return " and ".join(out)


def _generic(m: re.Match) -> str:
    doc = m["doc"]
    if m["path"]:  # a path to the old page: the new page's path
        if doc not in PAGES:
            raise Unmapped(m[0])
        return PAGES[doc]
    if m["secs"]:
        table = SECTIONS.get(doc, {})
        cites = []
        for s in re.findall(SEC, m["secs"]):
            key = s.replace("-", "–")
            if key not in table:
                raise Unmapped(m[0])
            cites.append(table[key])
        return _join(cites)
    if m["conv"]:
        if doc != "DESIGN":
            raise Unmapped(m[0])
        nums = [int(x) for x in re.findall(r"\d+", m["conv"])]
        nums = list(range(nums[0], nums[-1] + 1))
        if any(n not in CONVENTIONS for n in nums):
            raise Unmapped(m[0])
        return _join([CONVENTIONS[n] for n in nums])
    if m["named"]:
        if doc != "DESIGN":
            raise Unmapped(m[0])
        return _join([DESIGN_NAMED[m["named"].strip()]])
    if doc in BARE:
        return _join([BARE[doc]])
    if doc not in PAGES:
        raise Unmapped(m[0])
    return PAGES[doc]


def rewrite_text(text: str) -> tuple[str, list[str]]:
    """(new text, references that could not be mapped)."""
    for pattern, repl in PHRASES:
        text = re.sub(pattern, repl, text)
    unmapped: list[str] = []

    def sub(m: re.Match) -> str:
        try:
            return _generic(m)
        except Unmapped as e:
            unmapped.append(str(e))
            return m[0]

    return GENERIC.sub(sub, text), unmapped


WIDTH = 100  # prose width of the code's docstrings and comments
BULLET = re.compile(r"(?:[*•-]|\d+\.) ")


def _docstring_lines(text: str) -> set[int]:
    """0-based line numbers inside module, class and function docstrings of Python source."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno - 1, first.end_lineno))
    return lines


def _split(line: str, comment: bool) -> tuple[str, str]:
    """(prefix, prose): the indentation (and '# ' of a comment) and the words after it."""
    m = re.match(r"\s*(?:#+ ?)?" if comment else r"\s*", line)
    return line[:m.end()], line[m.end():]


def reflow(old: str, new: str, suffix: str) -> str:
    """Re-wrap prose that a rewrite made longer than ``WIDTH``: from the changed line to the end of
    its paragraph, in Python docstrings and in ``#`` comments of Python and TOML files. Code,
    Markdown and lines that were already long stay as they are."""
    if suffix not in (".py", ".toml"):
        return new
    a, b = old.split("\n"), new.split("\n")
    if len(a) != len(b):  # rules keep line breaks; anything else is left alone
        return new
    prose = _docstring_lines(new) if suffix == ".py" else set()
    for i in reversed([i for i, (x, y) in enumerate(zip(a, b)) if x != y]):
        line = b[i]
        comment = line.lstrip().startswith("#")
        if len(line) <= max(WIDTH, len(a[i])) or not (comment or i in prose):
            continue
        prefix, words = _split(line, comment)
        if words.startswith(('"""', "'''", "---")):  # a docstring's summary line, a ruler: one line
            continue
        # continuation lines: the same prefix; under a bullet, indented to its text
        cont = prefix + "  " if BULLET.match(words) else prefix
        j = i + 1  # the paragraph goes on while lines continue it at the same indentation
        while j < len(b):
            if comment:
                nxt_prefix, nxt = _split(b[j], True)
                ok = b[j].lstrip().startswith("#") and nxt_prefix == cont and nxt.strip()
            else:
                nxt_prefix, nxt = _split(b[j], False)
                ok = j in prose and nxt_prefix == cont and nxt.strip() and nxt.strip() != '"""'
            if not ok or BULLET.match(nxt) or nxt.startswith(("```", ">>>", "..")) or b[j - 1].rstrip().endswith("::"):
                break
            j += 1
        text = " ".join([words.strip()] + [_split(b[k], comment)[1].strip() for k in range(i + 1, j)])
        out, cur, pre = [], "", prefix
        for w in text.split():
            if cur and len(pre) + len(cur) + 1 + len(w) > WIDTH:
                out.append(pre + cur)
                cur, pre = w, cont
            else:
                cur = f"{cur} {w}" if cur else w
        out.append(pre + cur)
        b[i:j] = out
    return "\n".join(b)


def doc_sections(root: Path) -> dict[str, set[str]]:
    """docs/<page>.md -> its numbered section headings ('## 3. Title' gives '3')."""
    return {f"docs/{p.name}": set(HEADING.findall(p.read_text(encoding="utf-8")))
            for p in sorted((root / "docs").glob("*.md"))}


def broken_citations(text: str, sections: dict[str, set[str]]) -> list[str]:
    """Citations 'docs/x.md §n' in ``text`` whose page or numbered section does not exist."""
    bad = []
    for page, secs in CITATION.findall(text):
        for s in re.findall(r"\d+(?:[–-]\d+)?", secs):
            lo, _, hi = s.replace("-", "–").partition("–")
            if page not in sections or any(str(n) not in sections[page] for n in range(int(lo), int(hi or lo) + 1)):
                bad.append(f"{page} §{s}")
    return bad


def check_rules(root: Path) -> list[str]:
    """Every section a rule can write must exist in docs/ (so no rule points at nothing)."""
    sections = doc_sections(root)
    targets = [r for _, r in PHRASES]
    targets += [_join([v]) for table in SECTIONS.values() for v in table.values()]
    targets += [_join([v]) for v in (*CONVENTIONS.values(), *DESIGN_NAMED.values(), *BARE.values())]
    return sorted({b for t in targets for b in broken_citations(t, sections)})


def text_files(root: Path) -> list[Path]:
    """The repository's files (git's view when ROOT is a work tree, else a walk), minus this script."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout.decode()
        files = [root / f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in root.rglob("*") if not SKIP_DIRS & set(p.relative_to(root).parts)]
    return [p for p in files if p.is_file() and p.resolve() != SELF]


def read_text(path: Path) -> str | None:
    if path.stat().st_size > 5_000_000:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def run(root: Path, *, write: bool = True, log=print) -> int:
    """Rewrite (or, with ``write=False``, only check) every file under ``root``; 0 when clean."""
    root = root.resolve()
    if not (root / "docs").is_dir():
        log(f"rewrite_doc_refs: {root} has no docs/ folder; run it on the repository root")
        return 2
    bad_rules = check_rules(root)
    if bad_rules:
        log("rewrite_doc_refs: rules point at sections missing from docs/: " + ", ".join(bad_rules))
        return 1
    sections = doc_sections(root)
    changed, problems = [], []
    for path in text_files(root):
        text = read_text(path)
        if text is None:
            continue
        new = reflow(text, rewrite_text(text)[0], path.suffix)
        rel = path.relative_to(root)
        if new != text:
            changed.append(rel)
            if write:
                path.write_text(new, encoding="utf-8")
        for n, line in enumerate(new.splitlines(), 1):
            if LEFTOVER.search(line):
                problems.append(f"{rel}:{n}: unmapped reference: {line.strip()}")
            for b in broken_citations(line, sections):
                problems.append(f"{rel}:{n}: {b} is not a numbered section of docs/: {line.strip()}")
    for rel in changed:
        log(f"{'rewrote' if write else 'would rewrite'} {rel}")
    for p in problems:
        log(p)
    if problems:
        log(f"rewrite_doc_refs: {len(problems)} reference(s) need a rule in {SELF.name} (or a section in docs/)")
        return 1
    if changed and not write:
        return 1
    log(f"rewrite_doc_refs: {'rewrote ' + str(len(changed)) + ' file(s); ' if write and changed else ''}"
        "every reference points into docs/")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default=".", type=Path, help="repository root (default: .)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = p.parse_args(argv)
    return run(args.root, write=not args.check)


if __name__ == "__main__":
    sys.exit(main())
