"""``bsrnn bench transcribe``: whole speech models, audio to text, at batch 1 (docs/deployment.md §5).

For each model — exported speech models given with ``--models`` (e.g. the main job's dense and
block-pruned GRUs) and the paper's GRU 2560 model (preset ``gru2560``, three forward GRU layers
and a row convolution) with random weights of which 95 % of the 4×4 blocks of every recurrent
matrix are zero — every utterance of a split is transcribed with the recurrent layers on dense
PyTorch and on the block-sparse runtime, offline and (unidirectional models) streaming in
``--chunk-ms`` chunks. Repeats interleave the configurations utterance by utterance; a row's
real-time factor (processing seconds per audio second; audio loading excluded) is the median over
repeats, and ``speedup_vs_dense`` the median of per-repeat ratios. CER/WER come from the first
repeat's outputs, greedy and, when ``bsrnn.decode`` is installed, beam search (timed on the same
log-probabilities). The GRU 2560 model's weights are random: its CER is meaningless, its speed is
the paper's case.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json, write_text
from ..data.audio import load_audio
from ..data.features import LogMel
from ..data.manifest import read_manifest
from ..data.text import ALPHABET, BLANK
from ..inference import export_model, load
from ..inference.speech import speech_header
from ..inference.transcribe import Transcriber

PAPER = "gru2560-95%-random"


def add_arguments(p) -> None:
    p.add_argument("--models", type=Path, nargs="*", default=[],
                   help="exported speech models (bsrnn export), e.g. the main job's dense and BP models")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (default data/corpus)")
    p.add_argument("--split", default="test", help="split name or manifest path (default test)")
    p.add_argument("--limit", type=int, default=0, help="first N utterances only (default: the whole split)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median over them)")
    p.add_argument("--chunk-ms", type=float, default=200, help="streaming chunk (default 200 ms)")
    p.add_argument("--no-paper", action="store_true", help="leave out the paper-size GRU 2560 model")
    p.add_argument("--paper-sparsity", type=float, default=0.95, help="block sparsity of the GRU 2560 model")
    p.add_argument("--beam", type=int, default=16, help="beam width when bsrnn.decode is installed")
    p.add_argument("--lm", type=Path, default=None, help="character LM for the beam rows (bsrnn.decode)")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--out", default="benchmarks/transcribe", help="directory for transcribe.{json,md}")
    p.add_argument("--quick", action="store_true", help="3 utterances, 1 repeat (writes transcribe_quick.*)")
    p.add_argument("--threads", type=int, default=1, help="threads (default 1)")


def paper_model(sparsity: float, block: int = 4, seed: int = 0):
    """The paper's GRU model (gru2560) with random weights, ``sparsity`` of every recurrent
    matrix's ``block``×``block`` blocks zero (gate by gate), exported in memory."""
    from ..models import build_model
    from ..models.deepspeech2 import CLIP

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("gru2560").eval()
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight"):
                r, c = p.shape
                keep = torch.rand(r // block, c // block, generator=g) >= sparsity
                p.mul_(keep.repeat_interleave(block, 0).repeat_interleave(block, 1))
    exp = export_model(model, (block, block), exclude=["output.*"])
    n = model.spec.n_mels
    exp.speech = speech_header(dataclasses.asdict(model.spec), model.conv.LAYERS, clip=CLIP,
                               bn_eps=[m.eps for m in model.conv.norms], features=LogMel().settings(),
                               mean=[-6.0] * n, std=[3.0] * n, alphabet=ALPHABET, blank=BLANK)
    del model
    return exp


def _utterances(corpus: Path, split: str, limit: int):
    path = Path(split) if split.endswith(".jsonl") or "/" in split else corpus / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; generate the corpus with `bsrnn data synth {corpus}`")
    rows = read_manifest(path)
    rows = rows[:limit] if limit > 0 else rows
    return path, [(r["id"], load_audio(r["path"]), r["text"]) for r in rows]


def _density(exp) -> float:
    rec = [m for n, m in exp.sparse.items() if n.startswith("rnn.")]
    return float(sum(m.density * np.prod(m.matrix_shape) for m in rec) / max(1, sum(np.prod(m.matrix_shape) for m in rec)))


def bench_model(name, exp, utts, *, repeats, chunk_ms, threads, decode, beam_kw, log) -> list[dict]:
    trs = {rt: Transcriber(exp, runtime=rt, threads=threads, name=name) for rt in ("dense", "sparse")}
    for tr in trs.values():
        tr.warmup()
    modes = ["offline"] + (["stream"] if trs["sparse"].streamable else [])
    configs = [(rt, m) for m in modes for rt in trs]
    audio = sum(len(w) for _, w, _ in utts) / 16000
    busy = {c: np.zeros(repeats) for c in configs}
    outs = {c: [] for c in configs}
    lat = {c: [] for c in configs}
    for rep in range(repeats):
        for i, (_, wave, _) in enumerate(utts):
            order = configs[(i + rep) % len(configs):] + configs[:(i + rep) % len(configs)]  # interleaved
            for rt, mode in order:
                tr = trs[rt]
                r = (tr.transcribe(wave, keep_log_probs=rep == 0) if mode == "offline" else
                     tr.transcribe_stream(wave, chunk_ms=chunk_ms, keep_log_probs=rep == 0))
                busy[(rt, mode)][rep] += r.seconds
                if rep == 0:
                    outs[(rt, mode)].append((r.text, r.log_probs))
                lat[(rt, mode)] += r.chunk_latency_ms
    import jiwer

    refs = [t for _, _, t in utts]
    rows = []
    params = sum(int(np.prod(t.shape)) for n, t in exp.state_dict().items() if not n.endswith(("running_mean", "running_var", "num_batches_tracked")))
    for rt, mode in configs:
        rtf = busy[(rt, mode)] / audio
        speed = np.median(busy[("dense", mode)] / busy[(rt, mode)])
        diff = max(float((a[1] - b[1]).abs().max()) for a, b in zip(outs[(rt, mode)], outs[("dense", "offline")]))
        decoders = [("greedy", [t for t, _ in outs[(rt, mode)]], 0.0)]
        if decode is not None:
            t0 = time.perf_counter()
            hyps = [decode.prefix_beam_search(lp, alphabet=ALPHABET, blank=BLANK, **beam_kw) for _, lp in outs[(rt, mode)]]
            decoders.append(("beam" + ("+lm" if beam_kw.get("lm") is not None else ""), hyps, time.perf_counter() - t0))
        for dec, hyps, extra in decoders:
            row = {"model": name, "params": params, "recurrent_density": _density(exp),
                   "bidirectional": not trs[rt].streamable, "runtime": rt, "mode": mode, "decoder": dec,
                   "rtf": float(np.median(rtf)) + extra / audio, "rtf_min": float(rtf.min()) + extra / audio,
                   "rtf_iqr": float(np.subtract(*np.percentile(rtf, [75, 25]))), "speedup_vs_dense": float(speed),
                   "cer": 100 * jiwer.cer(refs, hyps), "wer": 100 * jiwer.wer(refs, hyps),
                   "max_abs_diff_vs_dense_offline": diff, "utterances": len(utts), "audio_s": audio,
                   "repeats": repeats, "threads": threads, "batch": 1}
            if mode == "stream":
                L = np.asarray(lat[(rt, mode)])
                row.update(chunk_ms=chunk_ms, chunk_latency_ms_median=float(np.median(L)),
                           chunk_latency_ms_p95=float(np.percentile(L, 95)), lookahead_ms=trs[rt].lookahead_ms())
            rows.append(row)
            log(f"{name:<24} {rt:<6} {mode:<7} {dec:<8} RTF {row['rtf']:.4f} (x{speed:.1f} vs dense)  CER "
                f"{row['cer']:6.2f}%" + (f"  chunk {row['chunk_latency_ms_median']:.1f} ms median" if mode == "stream" else ""))
    return rows


def _markdown(res: dict) -> str:
    i = res["info"]
    lines = [f"# Transcription speed and accuracy — `{res['command']}`", "",
             f"{i['cpu']}, {res['threads']} thread(s), batch 1; load average {i['loadavg_start'][0]:.2f} at start, "
             f"{i['loadavg_end'][0]:.2f} at end; foreign load {res['foreign_load_cores']:.2f} cores. Split "
             f"`{res['manifest']}`, {res['utterances']} utterances, {res['audio_s']:.0f} s of audio; RTF = processing s "
             "per audio s (median of interleaved repeats; lower is faster).", "",
             "| Model | Runtime | Mode | Decoder | RTF | × vs dense | CER % | WER % | chunk latency (median / p95 ms) |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        latency = (f"{r['chunk_latency_ms_median']:.1f} / {r['chunk_latency_ms_p95']:.1f} ({r['chunk_ms']:.0f} ms chunks, "
                   f"look-ahead {r['lookahead_ms']:.0f} ms)" if r["mode"] == "stream" else "")
        lines.append(f"| {r['model']} | {r['runtime']} | {r['mode']} | {r['decoder']} | {r['rtf']:.4f} | "
                     f"×{r['speedup_vs_dense']:.1f} | {r['cer']:.2f} | {r['wer']:.2f} | {latency} |")
    lines += ["", f"`{PAPER}` has random weights: its CER says nothing, its RTF is the paper's deployment case. "
              "Bidirectional models have no streaming rows (their reverse direction needs the whole utterance).", ""]
    return "\n".join(lines)


def run(args) -> int:
    from . import roofline as rf  # numba: imported when the benchmark runs, not when the parser is built

    threads = args.threads
    rf.set_threads(threads)
    limit, repeats = (3, 1) if args.quick else (args.limit, args.repeats)
    if repeats < 1 or limit < 0:
        raise ValueError("--repeats must be >= 1 and --limit >= 0")
    decode = None
    try:
        import bsrnn.decode as decode  # noqa: F811 - optional: the beam rows appear when it exists
    except ImportError:
        pass
    beam_kw = {"beam": args.beam}
    if decode is not None and args.lm is not None:
        lm = decode.CharLMScorer.from_export(args.lm) if args.lm.suffix == ".safetensors" else \
            decode.CharLMScorer.from_checkpoint(args.lm)
        beam_kw.update(lm=lm, lm_weight=args.lm_weight)
    for m in args.models:
        if m.suffix != ".safetensors":
            raise ValueError(f"{m}: pass exported models (bsrnn export CHECKPOINT OUT.safetensors), not checkpoints")
    manifest, utts = _utterances(args.corpus, args.split, limit)
    info = rf.machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    mon = rf.Foreign()
    mon.start()
    rows = []
    t0 = time.perf_counter()
    models = [(m.stem, lambda m=m: load(m)) for m in args.models]
    if not args.no_paper:
        models.append((PAPER if args.paper_sparsity == 0.95 else f"gru2560-{args.paper_sparsity:.0%}-random",
                       lambda: paper_model(args.paper_sparsity)))
    for name, make in models:
        rows += bench_model(name, make(), utts, repeats=repeats, chunk_ms=args.chunk_ms, threads=threads,
                            decode=decode, beam_kw=beam_kw, log=print)
    info["loadavg_end"] = os.getloadavg()
    cmd = "bsrnn bench transcribe" + (" --quick" if args.quick else "") + \
        "".join(f" --models {m}" if i == 0 else f" {m}" for i, m in enumerate(args.models)) + \
        (f" --limit {args.limit}" if args.limit and not args.quick else "")
    res = {"command": cmd, "info": info, "threads": threads, "manifest": str(manifest), "utterances": len(utts),
           "audio_s": sum(len(w) for _, w, _ in utts) / 16000, "foreign_load_cores": mon.stop(),
           "wall_s": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "transcribe_quick" if args.quick else "transcribe"
    write_json(res, out / f"{stem}.json", indent=1)
    write_text(_markdown(res), out / f"{stem}.md")
    print(f"results in {out / stem}.json and .md ({res['wall_s']:.0f} s)")
    return 0
