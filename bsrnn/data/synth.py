"""The embedded speech corpus: WordNet prompts voiced offline by espeak-ng and flite.

The paper trains on 2,100 h of English speech (§4.1) that the project cannot ship. This module
makes a labelled stand-in from Debian packages only (see docs/data.md §1): each WordNet
example phrase is voiced once by a randomly drawn voice, resampled to 16 kHz, trimmed to about
0.1 s of silence at each end, mixed with white noise at 10–30 dB SNR and stored as a 16-bit
mono WAV with a manifest row holding every synthesis setting.

Default corpus (``synthesize(out_dir)``): 6,200 utterances, 3.9 h of audio, 446 MB; about
2 minutes on 2 idle cores (230 CPU-seconds). Splits: ``train`` 5,400 (its own prompts, seen
voices); ``dev`` 300 and ``test`` 300 (held-out prompts, seen voices); ``test_unseen_voices``
200 (held-out prompts, voices that never occur in train).

Seen voices: espeak-ng with 7 accents × 27 variants, speed 130–190 wpm, pitch 30–70, word gap
0–3, and flite ``slt``, ``awb``, ``kal16`` with duration_stretch 0.8–1.3 and a per-voice f0
range. Unseen voices: espeak-ng accent ``en-us-nyc`` with variants ``m7 f4 klatt3 david``, and
flite ``rms``. ``hours=`` sizes the corpus by an estimated mean of ``MEAN_SECONDS`` per
utterance; beyond the ~39k train prompts, train prompts are reused with new voices.

Everything random is drawn from ``numpy.random.default_rng([seed, split, index])``, so the
same seed gives the same prompts, settings and bytes whatever the number of workers. Each
finished utterance is written atomically and journalled; split manifests are written
atomically at the end. A re-run verifies existing files against the manifests and journal and
only renders what is missing, so an interrupted run resumes and a finished one is instant.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import write_text
from .audio import SAMPLE_RATE, AudioError, add_noise, decode_audio, resample, trim_silence, write_wav
from .manifest import read_manifest, write_manifest
from .text import wordnet_prompts

SPLITS = ("train", "dev", "test", "test_unseen_voices")
DEFAULT_N_UTTS = 6200  # train 5,400 + dev 300 + test 300 + test_unseen_voices 200
MEAN_SECONDS = 2.3  # measured mean utterance length of the default corpus, for ``hours=``
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd")
# Variants that still sound like speech: whisper, croak, breathy and robot variants are left out.
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f5", "klatt",
                   "klatt2", "klatt4", "Alex", "Annie", "adam", "antonio", "aunty", "belinda",
                   "benjamin", "edward", "linda", "max", "paul", "quincy", "robert")
UNSEEN_ESPEAK_ACCENTS = ("en-us-nyc",)
UNSEEN_ESPEAK_VARIANTS = ("m7", "f4", "klatt3", "david")
FLITE_VOICES = {"slt": (140, 220), "awb": (85, 140), "kal16": (85, 140)}  # voice: f0 mean range
UNSEEN_FLITE_VOICES = {"rms": (85, 140)}
MAX_POOL_RESTARTS = 3
WAV_HEADER_BYTES = 44  # soundfile's PCM_16 mono WAV header: lets a re-run verify by file size


def _draw_voice(rng: np.random.Generator, unseen: bool) -> dict:
    """Engine, voice and prosody for one utterance; half espeak-ng, half flite."""
    if rng.random() < 0.5:
        accents = UNSEEN_ESPEAK_ACCENTS if unseen else ESPEAK_ACCENTS
        variants = UNSEEN_ESPEAK_VARIANTS if unseen else ESPEAK_VARIANTS
        voice = f"{accents[rng.integers(len(accents))]}+{variants[rng.integers(len(variants))]}"
        return {"engine": "espeak-ng", "voice": voice, "speed": int(rng.integers(130, 191)),
                "pitch": int(rng.integers(30, 71)), "word_gap": int(rng.integers(0, 4))}
    voices = UNSEEN_FLITE_VOICES if unseen else FLITE_VOICES
    name = sorted(voices)[rng.integers(len(voices))]
    lo, hi = voices[name]
    return {"engine": "flite", "voice": name, "duration_stretch": round(float(rng.uniform(0.8, 1.3)), 3),
            "f0_mean": int(rng.integers(lo, hi + 1))}


def plan_corpus(prompts: list[str], sizes: dict[str, int], seed: int) -> list[dict]:
    """Every utterance to render, with all its settings: a pure function of its arguments.

    Held-out splits take disjoint slices of one seeded permutation of the prompts; train takes
    the rest (cycling through them if it needs more utterances than there are prompts).
    """
    order = np.random.default_rng(seed).permutation(len(prompts))
    held = sum(sizes[s] for s in SPLITS[1:])
    if held >= len(prompts):
        raise ValueError(f"held-out splits need {held} prompts but only {len(prompts)} exist.")
    pools = {}
    start = 0
    for split in SPLITS[1:]:
        pools[split] = order[start:start + sizes[split]]
        start += sizes[split]
    pools["train"] = order[start:]
    jobs = []
    for k, split in enumerate(SPLITS):
        pool = pools[split]
        for i in range(sizes[split]):
            rng = np.random.default_rng([seed, k, i])
            job = {"id": f"{split}-{i:06d}", "split": split, "text": prompts[pool[i % len(pool)]]}
            job.update(_draw_voice(rng, unseen=split == "test_unseen_voices"))
            job.update(snr_db=round(float(rng.uniform(10, 30)), 2), gain=round(float(rng.uniform(0.3, 0.9)), 3),
                       noise_seed=int(rng.integers(2**31)))
            jobs.append(job)
    return jobs


def _run_engine(job: dict, timeout: float) -> tuple[np.ndarray, int]:
    if job["engine"] == "espeak-ng":
        cmd = ["espeak-ng", "-v", job["voice"], "-s", str(job["speed"]), "-p", str(job["pitch"]),
               "-g", str(job["word_gap"]), "--stdout", job["text"]]
    else:
        cmd = ["flite", "-voice", job["voice"], "--setf", f"duration_stretch={job['duration_stretch']}",
               "--setf", f"int_f0_target_mean={job['f0_mean']}", "-t", job["text"], "-o", "/dev/stdout"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}")
    return decode_audio(proc.stdout, name=f"{cmd[0]} output for {job['id']}")


def render(job: dict, out_dir: str, timeout: float = 30.0, retries: int = 2) -> tuple[dict | None, str]:
    """Synthesize one utterance to ``out_dir``; returns (manifest row, "") or (None, reason).

    Runs in a worker process. Engine failures and timeouts are retried (a loaded machine can
    stall one call); the last reason is returned rather than raised so the run goes on.
    """
    reason = ""
    for _ in range(retries + 1):
        try:
            wave, sr = _run_engine(job, timeout)
            break
        except (subprocess.TimeoutExpired, RuntimeError, AudioError, OSError) as e:
            reason = f"{job['id']} ({job['engine']} {job['voice']}): {e}"
    else:
        return None, reason
    speech = trim_silence(resample(wave, sr, SAMPLE_RATE))
    if len(speech) < SAMPLE_RATE // 4 or not np.any(speech):
        return None, f"{job['id']} ({job['engine']} {job['voice']}): engine produced silence."
    speech = speech * (job["gain"] / np.abs(speech).max())
    noisy = add_noise(speech, job["snr_db"], np.random.default_rng(job["noise_seed"]))
    rel = os.path.join("wav", job["split"], f"{job['id']}.wav")
    write_wav(os.path.join(out_dir, rel), noisy)
    row = {"id": job["id"], "path": rel, "text": job["text"], "duration": round(len(noisy) / SAMPLE_RATE, 4),
           "num_samples": len(noisy), "sample_rate": SAMPLE_RATE}
    row.update({k: v for k, v in job.items() if k not in row})
    return row, ""


def _done_rows(out_dir: Path, jobs: list[dict]) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Rows from earlier runs (manifests, then journal) whose settings equal the plan and whose
    WAV is complete, and the ids each existing manifest lists; anything else is rendered again."""
    found: dict[str, dict] = {}
    listed: dict[str, list[str]] = {}
    for split in SPLITS:
        if (out_dir / f"{split}.jsonl").exists():
            try:
                rows = read_manifest(out_dir / f"{split}.jsonl")
            except ValueError as e:  # e.g. edited by hand: the WAVs and the plan can rebuild it
                warnings.warn(f"{e} The manifest will be rebuilt.", RuntimeWarning, stacklevel=4)
                continue
            listed[split] = [r["id"] for r in rows]
            base = str(out_dir.absolute()) + os.sep
            for row in rows:  # back to the relative form the journal and render() use
                row["path"] = row["path"][len(base):] if row["path"].startswith(base) else row["path"]
                found[row["id"]] = row
    journal = out_dir / ".journal.jsonl"
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:  # a run killed mid-write leaves at most one torn line
                row = json.loads(line)
                found[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    done = {}
    for job in jobs:
        row = found.get(job["id"])
        if row is None or any(row.get(k) != v for k, v in job.items()):
            continue
        wav = out_dir / row["path"]
        if wav.is_file() and wav.stat().st_size == WAV_HEADER_BYTES + 2 * int(row.get("num_samples", -1)):
            done[job["id"]] = row
    return done, listed


def _render_all(todo: list[dict], out_dir: Path, workers: int, timeout: float, record) -> None:
    """Render ``todo`` in order, in this process or a pool, passing each result to ``record``.

    A worker process that dies (killed, out of memory) breaks the whole pool; it is replaced
    up to ``MAX_POOL_RESTARTS`` times and the utterances without a result are rendered again.
    """
    if workers <= 1:
        for job in todo:
            record(*render(job, str(out_dir), timeout))
        return
    for restart in range(MAX_POOL_RESTARTS + 1):
        pool = ProcessPoolExecutor(max_workers=workers)
        received = 0
        try:
            chunk = max(1, min(16, len(todo) // (4 * workers)))
            for row, reason in pool.map(render, todo, [str(out_dir)] * len(todo), [timeout] * len(todo),
                                        chunksize=chunk):
                record(row, reason)
                received += 1
            pool.shutdown()
            return
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            todo = todo[received:]  # results come in order: everything after them is redone
            if restart == MAX_POOL_RESTARTS:
                raise RuntimeError(f"synthesis worker processes died {restart + 1} times; {len(todo)} utterances "
                                   "are left (run again to resume; is the machine out of memory?)") from None
            warnings.warn(f"a synthesis worker process died; restarting the pool for the {len(todo)} "
                          "utterances left", RuntimeWarning, stacklevel=4)
        except BaseException:
            # Ctrl-C or an error: drop queued work instead of finishing it (the default on exit);
            # what is journalled so far is kept and the next run resumes from it.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def split_sizes(n_utts: int | None, hours: float | None, dev_size: int, test_size: int,
                unseen_voice_test_size: int) -> dict[str, int]:
    """Utterances per split; train gets what the held-out splits leave of the total."""
    if n_utts is not None and hours is not None:
        raise ValueError("give either n_utts or hours, not both.")
    total = (math.ceil(hours * 3600 / MEAN_SECONDS) if hours is not None
             else DEFAULT_N_UTTS if n_utts is None else int(n_utts))
    held = dev_size + test_size + unseen_voice_test_size
    if min(dev_size, test_size, unseen_voice_test_size) < 0 or total - held < 1:
        raise ValueError(f"a corpus of {total} utterances cannot hold dev={dev_size}, test={test_size} and "
                         f"test_unseen_voices={unseen_voice_test_size} plus at least one train utterance; "
                         "ask for more utterances or smaller held-out splits.")
    return {"train": total - held, "dev": dev_size, "test": test_size, "test_unseen_voices": unseen_voice_test_size}


def synthesize(out_dir: str | os.PathLike, *, n_utts: int | None = None, hours: float | None = None,
               seed: int = 0, workers: int = 2, dev_size: int = 300, test_size: int = 300,
               unseen_voice_test_size: int = 200, progress: bool = True, timeout: float = 30.0,
               prompts: list[str] | None = None) -> dict[str, Path]:
    """Build (or finish, or verify) the corpus in ``out_dir``; returns each split's manifest.

    ``n_utts`` counts all splits together (default 6,200); ``hours`` estimates it from
    ``MEAN_SECONDS``. ``workers`` <= 1 renders in this process. ``prompts`` replaces the WordNet
    prompts (tests, other text sources). Utterances whose synthesis keeps failing are skipped
    with one warning giving their count and the first reason.
    """
    out_dir = Path(out_dir)
    sizes = split_sizes(n_utts, hours, dev_size, test_size, unseen_voice_test_size)
    jobs = plan_corpus(wordnet_prompts() if prompts is None else list(prompts), sizes, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        manifests = _synthesize_locked(out_dir, jobs, workers, timeout, progress)
        _write_card(out_dir, seed, sizes)
        return manifests


def _write_card(out_dir: Path, seed: int, sizes: dict[str, int]) -> None:
    """``corpus.json``: how the corpus was made (the engine versions decide its exact bytes)."""
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return next((ln.strip() for ln in out.splitlines() if "version" in ln or "eSpeak" in ln), "?")
        except OSError:
            return "?"

    card = {"seed": seed, "sizes": sizes, "engines": {"espeak-ng": version(["espeak-ng", "--version"]),
                                                      "flite": version(["flite", "--version"])},
            "prompts": "WordNet 3.0 example phrases. WordNet 3.0 Copyright 2006 by Princeton University. "
                       "All rights reserved. Licence: https://wordnet.princeton.edu/license-and-commercial-use"}
    text = json.dumps(card, indent=1) + "\n"
    path = out_dir / "corpus.json"
    if not path.exists() or path.read_text(encoding="utf-8") != text:  # a re-run changes no file
        write_text(text, path)


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """Hold ``out_dir/.lock`` so two runs (say, a trainer and a user) never write one folder
    at once; the second waits, then finds the corpus finished and returns at once."""
    with open(out_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{out_dir}: another corpus run holds {lock.name}; waiting for it to finish", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the file descriptor, also when this process is killed


def _synthesize_locked(out_dir: Path, jobs: list[dict], workers: int, timeout: float,
                       progress: bool) -> dict[str, Path]:
    for split in SPLITS:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / "wav" / split).glob(".*.tmp"):  # left by a killed worker
            stale.unlink(missing_ok=True)
    done, listed = _done_rows(out_dir, jobs)
    todo = [j for j in jobs if j["id"] not in done]
    failures: list[str] = []
    if todo:
        journal_path = out_dir / ".journal.jsonl"
        torn = journal_path.exists() and not journal_path.read_bytes().endswith(b"\n") and journal_path.stat().st_size
        with open(journal_path, "a", encoding="utf-8") as journal, \
                tqdm(total=len(jobs), initial=len(done), unit="utt", desc="synth", disable=not progress) as bar:
            if torn:
                journal.write("\n")  # end a line torn by a kill, so the next row starts clean

            def record(row: dict | None, reason: str) -> None:
                if row is None:
                    failures.append(reason)
                else:
                    journal.write(json.dumps(row) + "\n")
                    journal.flush()  # in the OS's hands now: survives this process being killed
                    done[row["id"]] = row
                bar.update(1)

            _render_all(todo, out_dir, workers, timeout, record)
    manifests = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        rows = [done[j["id"]] for j in jobs if j["split"] == split and j["id"] in done]
        if listed.get(split) != [r["id"] for r in rows]:
            write_manifest(path, rows)
        manifests[split] = path
    (out_dir / ".journal.jsonl").unlink(missing_ok=True)  # every row now lives in a manifest
    if failures:
        warnings.warn(f"{len(failures)} of {len(jobs)} utterances could not be synthesized and were "
                      f"skipped; first: {failures[0]}", RuntimeWarning, stacklevel=3)
    return manifests
