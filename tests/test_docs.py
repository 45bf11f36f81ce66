"""The project's documentation is its own: nothing cites notes outside the repository, and every
``docs/<page>.md §n`` citation lands on a numbered section that exists. Also the rewrite tool that
turned the old references into docs/ citations (``tools/rewrite_doc_refs.py``)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("rewrite_doc_refs", ROOT / "tools" / "rewrite_doc_refs.py")
rw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rw)

# The old page names, assembled so that this file never contains them literally.
PAPER, DESIGN, KERNELS, CALIB, ANCHORS = (n + ".md" for n in ("PA" "PER", "DES" "IGN", "KER" "NELS",
                                                               "CALIB" "RATION", "ANC" "HORS"))
SHARED = "../" "sha" "red/docs/"


def cite(page: str, sec: str) -> str:
    """A citation assembled at run time, so that this file cites no missing section itself."""
    return f"docs/{page}.md §{sec}"


def _repo_lines():
    for path in rw.text_files(ROOT):
        text = rw.read_text(path)
        if text is not None:
            for n, line in enumerate(text.splitlines(), 1):
                yield path.relative_to(ROOT), n, line


def test_nothing_refers_to_notes_outside_the_repository():
    found = [f"{p}:{n}: {line.strip()}" for p, n, line in _repo_lines() if rw.LEFTOVER.search(line)]
    assert not found, ("references outside the repository; run `python tools/rewrite_doc_refs.py` "
                       "(and add a rule there for any it cannot map):\n" + "\n".join(found))


def test_every_docs_citation_is_a_numbered_section():
    sections = rw.doc_sections(ROOT)
    assert {"docs/method.md", "docs/architecture.md", "docs/kernels.md", "docs/training-on-cpu.md",
            "docs/data.md"} <= set(sections)
    bad = [f"{p}:{n}: {b}" for p, n, line in _repo_lines() for b in rw.broken_citations(line, sections)]
    assert not bad, "citations of missing docs sections:\n" + "\n".join(bad)
    assert rw.check_rules(ROOT) == []  # every section the tool can write exists


def test_broken_citations_are_found():
    sections = {"docs/method.md": {"1", "2", "3"}}
    assert rw.broken_citations("see docs/method.md §2, §3", sections) == []
    assert rw.broken_citations("see docs/method.md §1–3", sections) == []
    assert rw.broken_citations("see " + cite("method", "4"), sections) == [cite("method", "4")]
    assert rw.broken_citations("see " + cite("method", "2–4"), sections) == [cite("method", "2–4")]
    assert rw.broken_citations("see " + cite("nowhere", "1"), sections) == [cite("nowhere", "1")]


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_rewrite_maps_each_reference_and_is_idempotent(repo):
    src = repo / "pkg" / "mod.py"
    src.parent.mkdir()
    src.write_text(
        f'"""Summary.\n\nMasks stay valid ({PAPER} §11) and never return ({PAPER} §2.6); the\n'
        f'heuristics ({PAPER} §2.3–2.4); models ({PAPER} §6, §8); kernels ({DESIGN} rule 9, '
        f'{DESIGN} conventions 4–5).\n"""\n\n'
        f'x = 1  # pitfalls ({KERNELS} §6), recipe ({CALIB} §3)\n')
    (repo / "README.md").write_text(f"See `{SHARED}{DESIGN}`.\n")
    lines = []
    assert rw.run(repo, log=lines.append) == 0, lines
    assert src.read_text() == (
        '"""Summary.\n\nMasks stay valid (docs/method.md §8) and never return (docs/method.md §9); the\n'
        'heuristics (docs/method.md §4); models (docs/method.md §15, §17); kernels (docs/kernels.md §3,\n'
        'docs/method.md §6, §8).\n"""\n\n'
        'x = 1  # pitfalls (docs/kernels.md §10), recipe (docs/training-on-cpu.md §3)\n')
    assert (repo / "README.md").read_text() == "See `docs/architecture.md`.\n"
    before = {p: p.read_text() for p in (src, repo / "README.md")}
    assert rw.run(repo, log=lines.append) == 0 and rw.run(repo, write=False, log=lines.append) == 0
    assert {p: p.read_text() for p in before} == before  # a second run changes nothing


def test_context_decides_the_section(repo):
    f = repo / "a.py"
    f.write_text(f'"""The paper trained on 2,100 hours of speech with many GPUs ({PAPER} §6); the\n'
                 f'models are Deep Speech 2 style ({PAPER} §6)."""\n')
    assert rw.run(repo, log=lambda _: None) == 0
    text = f.read_text()
    assert "many GPUs (docs/method.md §16)" in text and "Deep Speech 2 style (docs/method.md §15)" in text


def test_check_mode_changes_nothing_and_reports(repo):
    f = repo / "b.toml"
    f.write_text(f"# recovery ({CALIB} §5)\n")
    assert rw.run(repo, write=False, log=lambda _: None) == 1
    assert f.read_text() == f"# recovery ({CALIB} §5)\n"
    assert rw.main([str(repo)]) == 0
    assert f.read_text() == "# recovery (docs/training-on-cpu.md §8)\n"


def test_unmapped_references_fail_with_file_and_line(repo):
    f = repo / "c.md"
    f.write_text(f"fine\nsee {ANCHORS} §1 and {PAPER} §99\n")
    lines = []
    assert rw.run(repo, log=lines.append) == 1
    report = "\n".join(lines)
    assert f"c.md:2: unmapped reference: see {ANCHORS} §1 and {PAPER} §99" in report
    assert f.read_text() == f"fine\nsee {ANCHORS} §1 and {PAPER} §99\n"  # nothing mapped, nothing changed


def test_a_citation_of_a_missing_section_fails(repo):
    (repo / "d.py").write_text(f"# see {cite('method', '99')}\n")
    lines = []
    assert rw.run(repo, log=lines.append) == 1
    assert any(f"d.py:1: {cite('method', '99')} is not a numbered section" in line for line in lines)


def test_reflow_rewraps_only_the_grown_prose():
    first = f"    A sentence long enough to fill nearly all of its line by itself, then citing {PAPER} §6 at"
    assert len(first) <= rw.WIDTH < len(first) + 6  # the rewrite pushes it past the width
    old = ('def f():\n    """Summary.\n\n' + first + '\n    the end, and it goes on for a while.\n\n'
           '    Next paragraph.\n    """\n'
           '    return g("a string with ' + PAPER + ' §6 that is code, not prose, and must stay on its line '
           'whatever its length")\n')
    new = rw.reflow(old, rw.rewrite_text(old)[0], ".py")
    lines = new.splitlines()
    doc = lines[3:lines.index("    Next paragraph.") - 1]
    assert len(doc) == 2 and all(len(x) <= rw.WIDTH and x.startswith("    ") for x in doc), doc
    words = " ".join(x.strip() for x in doc).split()
    assert words == ("A sentence long enough to fill nearly all of its line by itself, then citing "
                     "docs/method.md §15 at the end, and it goes on for a while.").split()
    assert lines[-1].startswith('    return g("a string with docs/method.md §15 that is code')  # untouched
    assert rw.reflow(new, new, ".py") == new
