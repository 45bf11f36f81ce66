"""The project's documentation is its own: nothing cites notes outside the repository, and every
``docs/<page>.md §n`` citation lands on a numbered section (``## n. Title``) that exists."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The old outside page names, assembled so that this file never contains them literally.
OLD = ("PA" "PER", "DES" "IGN", "KER" "NELS", "CALIB" "RATION", "ECO" "SYSTEM", "ANC" "HORS")
LEFTOVER = re.compile("(?:" + "|".join(OLD) + r")\.md|" + "sha" "red/docs|" + r"\.\./" + "sha" "red|kernel_bench" r"\.py")
CITATION = re.compile(r"(docs/[a-z-]+\.md) (§\d+(?:[–-]\d+)?(?:, §\d+(?:[–-]\d+)?)*)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)\. ", re.M)


def repo_lines():
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, out.split("\0")):
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            yield name, n, line


def doc_sections() -> dict[str, set[str]]:
    return {f"docs/{p.name}": set(HEADING.findall(p.read_text(encoding="utf-8"))) for p in (ROOT / "docs").glob("*.md")}


def broken_citations(text: str, sections: dict[str, set[str]]) -> list[str]:
    bad = []
    for page, secs in CITATION.findall(text):
        for s in re.findall(r"\d+(?:[–-]\d+)?", secs):
            lo, _, hi = s.replace("-", "–").partition("–")
            if page not in sections or any(str(n) not in sections[page] for n in range(int(lo), int(hi or lo) + 1)):
                bad.append(f"{page} §{s}")
    return bad


def test_nothing_refers_to_notes_outside_the_repository():
    found = [f"{p}:{n}: {line.strip()}" for p, n, line in repo_lines() if LEFTOVER.search(line)]
    assert not found, "references to notes outside the repository; cite docs/ instead:\n" + "\n".join(found)


def test_every_docs_citation_is_a_numbered_section():
    sections = doc_sections()
    assert {"docs/method.md", "docs/architecture.md", "docs/kernels.md", "docs/training-on-cpu.md",
            "docs/data.md"} <= set(sections)
    bad = [f"{p}:{n}: {b}" for p, n, line in repo_lines() for b in broken_citations(line, sections)]
    assert not bad, "citations of missing docs sections:\n" + "\n".join(bad)


def test_broken_citations_are_found():
    sections = {"docs/method.md": {"1", "2", "3"}}
    cite = "docs/method.md §"  # assembled below, so that this file cites no missing section itself
    assert broken_citations("see docs/method.md §2, §3", sections) == []
    assert broken_citations("see docs/method.md §1–3", sections) == []
    assert broken_citations("see " + cite + "4", sections) == [cite + "4"]
    assert broken_citations("see " + cite + "2–4", sections) == [cite + "2–4"]
    nowhere = "docs/nowhere" + ".md §1"
    assert broken_citations("see " + nowhere, sections) == [nowhere]
    assert LEFTOVER.search("see " + OLD[0] + ".md") and not LEFTOVER.search("see docs/method.md")
