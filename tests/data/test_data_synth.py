"""The TTS corpus: valid audio and manifests, determinism, instant re-runs, resumption."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bsrnn.data.manifest import read_manifest
from bsrnn.data.synth import (DEFAULT_N_UTTS, ESPEAK_ACCENTS, ESPEAK_VARIANTS, FLITE_VOICES, MEAN_SECONDS, SPLITS,
                              UNSEEN_ESPEAK_ACCENTS, UNSEEN_ESPEAK_VARIANTS, UNSEEN_FLITE_VOICES, plan_corpus,
                              render, split_sizes, synthesize)


# Short prompts for the tests that only need many utterances quickly (30 distinct phrases).
SHORT_PROMPTS = [f"say {c} {w}" for c in "red green blue black white pink gold grey brown tan".split()
                 for w in ("now", "then", "soon")]


@pytest.fixture
def tiny(tiny_corpus):
    """The settings the session's tiny corpus was made with."""
    return tiny_corpus[2]


def _snapshot(out):
    """Bytes of every manifest and WAV, keyed by path relative to the corpus folder."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".wav", ".jsonl"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_tiny_corpus_is_valid(tiny_corpus):
    out, manifests, _ = tiny_corpus
    assert set(manifests) == set(SPLITS)
    counts = {s: len(read_manifest(m)) for s, m in manifests.items()}
    assert counts == {"train": 4, "dev": 2, "test": 2, "test_unseen_voices": 2}
    texts = {s: {r["text"] for r in read_manifest(m)} for s, m in manifests.items()}
    for a in SPLITS:  # prompts are disjoint across splits
        for b in SPLITS:
            assert a == b or not texts[a] & texts[b]
    for split, m in manifests.items():
        for row in read_manifest(m):
            assert row["split"] == split and row["engine"] in ("espeak-ng", "flite")
            keys = {"speed", "pitch", "word_gap"} if row["engine"] == "espeak-ng" else {"duration_stretch", "f0_mean"}
            assert keys | {"id", "path", "text", "duration", "voice", "snr_db", "gain", "noise_seed"} <= set(row)
            info = sf.info(row["path"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == row["num_samples"] and abs(info.frames / 16000 - row["duration"]) < 1e-3
            x, _ = sf.read(row["path"])
            assert 0.5 < len(x) / 16000 < 10 and np.abs(x).max() < 1.0
            # 0.1 s of leading pad is pure noise: the measured SNR must match the drawn one
            noise = np.mean(x[:1600] ** 2)
            snr = 10 * np.log10((np.mean(x**2) - noise) / noise)
            assert abs(snr - row["snr_db"]) < 1.0, (row["id"], snr, row["snr_db"])
    assert not list(out.rglob(".*.tmp")) and not (out / ".journal.jsonl").exists()
    card = json.loads((out / "corpus.json").read_text())
    assert card["seed"] == 7 and card["sizes"]["train"] == 4 and "1.5" in card["engines"]["espeak-ng"]
    assert "WordNet 3.0 Copyright" in card["prompts"]


def test_same_seed_same_bytes_whatever_the_workers(tiny_corpus, tiny, tmp_path):
    out, _, _ = tiny_corpus
    synthesize(tmp_path, workers=1, **tiny)
    assert _snapshot(tmp_path) == _snapshot(out)


def test_other_seed_other_corpus():
    jobs_a = plan_corpus([f"prompt number {i}" for i in range(100)], {s: 3 for s in SPLITS}, seed=7)
    jobs_b = plan_corpus([f"prompt number {i}" for i in range(100)], {s: 3 for s in SPLITS}, seed=8)
    assert [j["text"] for j in jobs_a] != [j["text"] for j in jobs_b]


def test_rerun_renders_nothing_and_touches_nothing(tiny_corpus, tiny, monkeypatch):
    from bsrnn.data import synth as synth_module

    out, manifests, _ = tiny_corpus
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}

    def no_rendering(*a, **k):
        raise AssertionError("a finished corpus was rendered again")

    # prompts load + verification only (about 1 s): no TTS engine runs
    monkeypatch.setattr(synth_module, "_render_all", no_rendering)
    assert synthesize(out, workers=2, **tiny) == manifests
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_resume_repairs_deleted_truncated_and_journalled_files(tiny_corpus, tiny, tmp_path):
    ref, _, _ = tiny_corpus
    out = tmp_path / "c"
    shutil.copytree(ref, out)
    wavs = sorted((out / "wav" / "train").glob("*.wav"))
    wavs[0].unlink()  # deleted
    with open(wavs[1], "r+b") as f:  # truncated (as by a crash without atomic writes)
        f.truncate(1000)
    (out / "wav" / "dev" / ".dev-000000.wav.abc.tmp").write_bytes(b"half")  # a killed worker's temp file
    # an interrupted run: no test manifest yet, its rows in the journal, the last line torn
    rows = (out / "test.jsonl").read_text().splitlines()
    (out / "test.jsonl").unlink()
    (out / ".journal.jsonl").write_text(rows[0] + "\n" + rows[1][:30])
    untouched = wavs[2]
    mtime = untouched.stat().st_mtime_ns
    synthesize(out, workers=1, **tiny)
    assert _snapshot(out) == _snapshot(ref)
    assert untouched.stat().st_mtime_ns == mtime  # verified, not re-rendered
    assert not list(out.rglob(".*.tmp")) and not (out / ".journal.jsonl").exists()


def test_killed_run_leaves_no_half_files_and_resumes(tmp_path, tiny):
    sizes = dict(tiny, n_utts=16, prompts=SHORT_PROMPTS)
    code = (f"from bsrnn.data.synth import synthesize; synthesize({str(tmp_path / 'k')!r}, workers=1, "
            f"**{sizes!r})")
    proc = subprocess.Popen([sys.executable, "-c", code])
    journal = tmp_path / "k" / ".journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k" / "train.jsonl").exists(), "run finished before it could be killed"
    for wav in (tmp_path / "k").rglob("*.wav"):  # every file under a final name is complete
        assert sf.info(wav).frames * 2 + 44 == wav.stat().st_size
    synthesize(tmp_path / "k", workers=2, **sizes)
    synthesize(tmp_path / "ref", workers=2, **sizes)
    assert _snapshot(tmp_path / "k") == _snapshot(tmp_path / "ref")


def _pool_workers() -> list[int]:
    """Direct child processes of this test process (the pool's workers; the TTS engines they
    start are grandchildren)."""
    me, kids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            kids.append(int(stat.parent.name))
    return kids


def test_a_killed_worker_is_replaced_and_the_run_completes(tmp_path, tiny):
    sizes = dict(tiny, n_utts=24, prompts=SHORT_PROMPTS)
    journal = tmp_path / ".journal.jsonl"
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            if journal.exists() and journal.read_text().count("\n") >= 2 and _pool_workers():
                victim = _pool_workers()[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(0.002)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.warns(RuntimeWarning, match=r"a synthesis worker process died; restarting the pool for the \d+"):
        manifests = synthesize(tmp_path, workers=2, **sizes)
    thread.join()
    assert killed
    rows = [r for m in manifests.values() for r in read_manifest(m)]
    assert len(rows) == 24
    for r in rows:
        assert sf.info(r["path"]).frames == r["num_samples"]


def test_a_damaged_manifest_is_rebuilt(tiny_corpus, tiny, tmp_path):
    ref, _, _ = tiny_corpus
    out = tmp_path / "c"
    shutil.copytree(ref, out)
    (out / "dev.jsonl").write_text('{"id": "dev-000000", "path": \n')
    with pytest.warns(RuntimeWarning, match=r"dev\.jsonl:1: not valid JSON .* The manifest will be rebuilt"):
        synthesize(out, workers=1, **tiny)
    assert _snapshot(out) == _snapshot(ref)


def test_failed_synthesis_is_skipped_with_a_counted_warning(tmp_path, tts):
    with pytest.warns(RuntimeWarning, match=r"4 of 4 utterances could not be synthesized and were skipped; "
                                            r"first: train-000000 \((espeak-ng|flite) .*timed out"):
        manifests = synthesize(tmp_path, n_utts=4, dev_size=1, test_size=1, unseen_voice_test_size=1,
                               workers=1, progress=False, timeout=1e-4)
    assert all(read_manifest(m) == [] for m in manifests.values())


def test_render_reports_silent_output_instead_of_raising(tmp_path, tts):
    (tmp_path / "wav" / "train").mkdir(parents=True)
    job = {"id": "train-000000", "split": "train", "text": " ", "engine": "espeak-ng", "voice": "en-us+m1",
           "speed": 150, "pitch": 50, "word_gap": 0, "snr_db": 20.0, "gain": 0.5, "noise_seed": 1}
    assert render(job, str(tmp_path), retries=0) == (None, "train-000000 (espeak-ng en-us+m1): engine produced silence.")
    assert not list((tmp_path / "wav" / "train").iterdir())


def test_every_configured_voice_exists(tts):
    # Both engines silently fall back to a default voice for an unknown name, so a typo here
    # would quietly shrink the corpus's voice variety: check the names against the engines.
    variants = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    files = {line.split()[-1].split("/")[-1] for line in variants.splitlines()[1:] if line.strip()}
    assert set(ESPEAK_VARIANTS + UNSEEN_ESPEAK_VARIANTS) <= files
    accents = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True).stdout
    languages = {line.split()[1] for line in accents.splitlines()[1:] if line.strip()}
    assert set(ESPEAK_ACCENTS + UNSEEN_ESPEAK_ACCENTS) <= languages
    flite = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    assert set(FLITE_VOICES) | set(UNSEEN_FLITE_VOICES) <= set(flite)


def test_unseen_voices_never_occur_in_train():
    prompts = [f"prompt {i}" for i in range(3000)]
    jobs = plan_corpus(prompts, {"train": 2000, "dev": 100, "test": 100, "test_unseen_voices": 300}, seed=0)
    voices = {s: Counter(j["voice"] for j in jobs if j["split"] == s) for s in SPLITS}
    assert not set(voices["train"]) & set(voices["test_unseen_voices"])
    assert set(voices["dev"]) <= set(voices["train"]) and set(voices["test"]) <= set(voices["train"])
    for v in voices["test_unseen_voices"]:
        assert v in UNSEEN_FLITE_VOICES or (v.split("+")[0] in UNSEEN_ESPEAK_ACCENTS
                                            and v.split("+")[1] in UNSEEN_ESPEAK_VARIANTS)
    engines = Counter(j["engine"] for j in jobs)
    assert abs(engines["flite"] - engines["espeak-ng"]) < 200  # about half each
    assert len({j["id"] for j in jobs}) == len(jobs)


def test_train_reuses_prompts_only_when_it_runs_out():
    prompts = [f"prompt {i}" for i in range(10)]
    jobs = plan_corpus(prompts, {"train": 12, "dev": 2, "test": 1, "test_unseen_voices": 1}, seed=0)
    train = [j["text"] for j in jobs if j["split"] == "train"]
    held = {j["text"] for j in jobs if j["split"] != "train"}
    assert len(set(train[:6])) == 6 and not set(train) & held and train[6:] == train[:6]


def test_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="cannot hold dev=2, test=2 and test_unseen_voices=2"):
        synthesize(tmp_path, n_utts=5, dev_size=2, test_size=2, unseen_voice_test_size=2)
    with pytest.raises(ValueError, match="either n_utts or hours"):
        synthesize(tmp_path, n_utts=5, hours=1)
    assert DEFAULT_N_UTTS == 6200


def test_split_sizes():
    assert split_sizes(None, None, 300, 300, 200) == {"train": 5400, "dev": 300, "test": 300,
                                                      "test_unseen_voices": 200}
    assert split_sizes(None, 1.0, 10, 10, 10) == {"train": 1536, "dev": 10, "test": 10, "test_unseen_voices": 10}
    assert sum(split_sizes(None, 20, 300, 300, 200).values()) * MEAN_SECONDS / 3600 == pytest.approx(20, rel=1e-3)
