"""``bsrnn bench training``: the median training step of the speech models, by width, sparsity,
precision and path, with each configuration's peak memory.

One training step is what the trainer does per batch: forward, CTC loss, backward, gradient
clipping, Adam, and the sparsity method's mask work (``method.step``). Every configuration is
timed in interleaved rounds in one process, on the main job's batch shape (24 utterances × 230
feature frames by default), so that machine noise hits all of them alike; the result is the
median over rounds with the spread. The configurations:

* dense bidirectional GRU 3×{128, 256, 320, 512}, ``path = "dense"``;
* 90 %-sparse (4×4 blocks, every recurrent matrix, input and recurrent, random fixed masks as
  in ``static`` sparse training) GRU 3×{256, 512, 1024}, both on the dense-with-zeros path
  (``"masked"``: dense kernels over the masked weights, what BP/GLP train on) and on the
  block-sparse path (``"bsr"``: ``bsrnn.models.sparse_gru``, cost following the nonzeros);
* each in ``fp32`` and ``bf16`` (``bsrnn.models.precision``).

Peak memory: each configuration also runs a few steps alone in a child process (with the
allocator ``bsrnn main`` gives its training processes, ``bsrnn.train.memory``), whose peak
resident set size (``ru_maxrss``) is recorded as ``peak_rss_mb`` — a number for that model
alone, not for the process that holds all of them.

Writes ``training.json`` (``rows``: hidden, sparsity, precision, path, step_ms, spread,
peak_rss_mb, …), ``training.md`` and ``training.png``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import write_json, write_text
from ..models import precision as prec
from ..models.deepspeech2 import build_model
from ..models.precision import RECURRENT_BF16_MIN_WIDTH, resolve_recurrent
from ..train.config import OptimConfig
from ..train.engine import make_optimizer
from ..train.memory import allocator_env, peak_rss_mb

DENSE_WIDTHS = (128, 256, 320, 512)
SPARSE_WIDTHS = (256, 512, 1024)
SPARSITY = 0.9
BLOCK = (4, 4)
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Case:
    hidden: int
    sparsity: float
    precision: str
    path: str  # dense | masked | bsr
    recurrent: str = "auto"  # the per-step W_hh·h product's precision (DeepSpeech2.set_precision)

    @property
    def name(self) -> str:
        return (f"gru3x{self.hidden}-{self.path}-{self.precision}" + (f"-s{self.sparsity:g}" if self.sparsity else "")
                + ("" if self.recurrent == "auto" else f"-rec{self.recurrent}"))


def default_cases(quick: bool = False) -> list[Case]:
    if quick:
        return [Case(32, 0.0, p, "dense") for p in PRECISIONS] + [
            Case(64, SPARSITY, p, path) for p in PRECISIONS for path in ("masked", "bsr")]
    cases = [Case(h, 0.0, p, "dense") for h in DENSE_WIDTHS for p in PRECISIONS]
    # bf16 training with the per-step product in the precision "auto" does not pick at that width:
    # the measurement behind precision.RECURRENT_BF16_MIN_WIDTH
    cases += [Case(h, 0.0, "bf16", "dense", "fp32" if resolve_recurrent("auto", "bf16", h) == "bf16" else "bf16")
              for h in DENSE_WIDTHS]
    cases += [Case(h, SPARSITY, p, path) for h in SPARSE_WIDTHS for p in PRECISIONS for path in ("masked", "bsr")]
    return cases


class Setup:
    """A model, its optimizer, its sparsity method and a fixed batch: one configuration."""

    def __init__(self, case: Case, batch: int, frames: int, seed: int = 0):
        from ..sparsity import NoSparsity, StaticSparsity

        torch.manual_seed(seed)
        self.case = case
        self.model = build_model("gru128", hidden=case.hidden).set_precision(case.precision, case.recurrent)
        self.opt = make_optimizer(OptimConfig(lr=1e-4), self.model)  # as bsrnn train builds it
        if case.sparsity:
            self.method = StaticSparsity(self.model, BLOCK, case.sparsity, exclude=["output.*"], optimizer=self.opt,
                                         seed=seed)
        else:
            self.method = NoSparsity(self.model, (1, 1), exclude=["output.*"])  # as bsrnn train builds "none"
        if case.path == "bsr":
            from ..models.sparse_gru import enable_block_sparse, exact_gradient_params

            enable_block_sparse(self.model, self.method.masks.block_masks, BLOCK)
            # as the trainer does: the block-sparse path's gradients are exactly zero at pruned
            # entries, so masks are not re-applied to the dense tensors after every step
            self.method.masks.exact_grads = exact_gradient_params(self.model)
        g = torch.Generator().manual_seed(seed)
        self.feats = torch.randn(batch, frames, self.model.spec.n_mels, generator=g)
        self.lengths = torch.full((batch,), frames, dtype=torch.long)
        self.targets = torch.randint(1, self.model.spec.n_classes, (batch, frames // 8), generator=g)
        self.target_lengths = torch.full((batch,), frames // 8, dtype=torch.long)
        self.steps = 0

    def step(self) -> float:
        log_probs, out_lengths = self.model(self.feats, self.lengths)
        loss = F.ctc_loss(log_probs, self.targets, out_lengths, self.target_lengths, zero_infinity=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.method.step(self.steps)
        self.steps += 1
        return float(loss.detach())


def peak_rss_child(case: Case, batch: int, frames: int, steps: int, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that trains ``case`` for ``steps`` steps."""
    cmd = [sys.executable, "-m", "bsrnn.bench.training", "--child", json.dumps(asdict(case)),
           str(batch), str(frames), str(steps), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600,
                         env=allocator_env())  # the allocator bsrnn's training processes run with
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory child for {case.name} failed: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def _child(argv: list[str]) -> int:
    case = Case(**json.loads(argv[0]))
    batch, frames, steps, threads = map(int, argv[1:5])
    torch.set_num_threads(threads)
    s = Setup(case, batch, frames)
    for _ in range(steps):
        s.step()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
    return 0


def measure(cases: list[Case], *, batch: int = 24, frames: int = 230, rounds: int = 5, threads: int | None = None,
            rss_steps: int = 3, log=print) -> dict:
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"asked torch for {threads} threads, got {torch.get_num_threads()}")
    load_before = os.getloadavg()
    setups = []
    for c in cases:
        s = Setup(c, batch, frames)
        s.step()  # warm-up: Adam state, kernel builds, packed layouts
        setups.append(s)
        log(f"  set up {c.name}")
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds):
        for s in setups:
            t0 = time.perf_counter()
            s.step()
            times[s.case.name].append(time.perf_counter() - t0)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * v[-1]:.0f}" for n, v in times.items()))
    load_after = os.getloadavg()
    rows = []
    for c in cases:
        v = times[c.name]
        n_rec = sum(int(torch.count_nonzero(p)) for n, p in setups[cases.index(c)].model.rnn.named_parameters()
                    if n.startswith("weight_hh"))
        rows.append({"name": c.name, **asdict(c), "block": list(BLOCK) if c.sparsity else None,
                     "step_ms": 1e3 * statistics.median(v), "spread_ms": [1e3 * min(v), 1e3 * max(v)],
                     "recurrent_nonzeros": n_rec,
                     "recurrent_precision": setups[cases.index(c)].model.recurrent_precision})
    del setups
    for row, c in zip(rows, cases):
        row["peak_rss_mb"] = peak_rss_child(c, batch, frames, rss_steps, threads)
        log(f"  peak RSS {c.name}: {row['peak_rss_mb']:.0f} MB")
    return {"benchmark": "training", "batch": batch, "frames": frames, "rounds": rounds, "threads": threads,
            "rows": rows, "ratios": ratios(rows), "machine": machine(load_before, load_after)}


def machine(load_before, load_after) -> dict:
    flags = ""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "native_bf16": prec.native_bf16(), "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "loadavg_before": load_before, "loadavg_after": load_after, "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default)"),
            "child_allocator": "jemalloc" if "jemalloc" in allocator_env().get("LD_PRELOAD", "") else "system",
            "python": platform.python_version()}


def _find(rows, **kw):
    return next((r for r in rows if all(r[k] == v for k, v in kw.items())), None)


def ratios(rows: list[dict]) -> dict:
    """The issue's comparisons, from rows of the same run."""
    out = {}
    d32, d16 = _find(rows, hidden=256, path="dense", precision="fp32"), _find(rows, hidden=256, path="dense",
                                                                              precision="bf16")
    if d32 and d16:
        out["dense256_bf16_speedup"] = d32["step_ms"] / d16["step_ms"]
    # per dense width: bf16 training's step with the per-step product in bf16 over the one in fp32
    # (> 1: the bf16 product is slower at that width); "auto" switches at RECURRENT_BF16_MIN_WIDTH
    for h in DENSE_WIDTHS:
        pair = {r["recurrent_precision"]: r for r in rows if r["hidden"] == h and r["path"] == "dense"
                and r["precision"] == "bf16"}
        if len(pair) == 2:
            out[f"dense{h}_recurrent_bf16_over_fp32"] = pair["bf16"]["step_ms"] / pair["fp32"]["step_ms"]
    out["recurrent_bf16_min_width_in_use"] = RECURRENT_BF16_MIN_WIDTH
    for p in PRECISIONS:
        m = _find(rows, hidden=1024, path="masked", precision=p)
        b = _find(rows, hidden=1024, path="bsr", precision=p)
        d = _find(rows, hidden=320, path="dense", precision=p)
        if m and b:
            out[f"sparse1024_bsr_over_masked_{p}"] = m["step_ms"] / b["step_ms"]
        if b and d:
            out[f"sparse1024_bsr_vs_dense320_{p}"] = b["step_ms"] / d["step_ms"]
    return out


def write_markdown(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = [f"# Training step (bsrnn bench training)", "",
             f"Batch {res['batch']} × {res['frames']} frames, {res['threads']} threads, median of {res['rounds']} "
             f"interleaved rounds. CPU: {m['cpu']} ({m['cores']} cores; native bf16: {m['native_bf16']}, AMX: "
             f"{m['amx']}); load average {m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after; "
             f"torch {m['torch']}.", "",
             "| model | sparsity | precision | path | step (ms) | spread (ms) | recurrent W_hh nonzeros | peak RSS (MB) |",
             "|---|---:|---|---|---:|---|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| GRU 3×{r['hidden']} | {100 * r['sparsity']:.0f}% | {r['precision']} "
                     f"(recurrent {r['recurrent_precision']}) | {r['path']} | {r['step_ms']:.0f} | "
                     f"{r['spread_ms'][0]:.0f}–{r['spread_ms'][1]:.0f} | {r['recurrent_nonzeros']:,} | "
                     f"{r['peak_rss_mb']:.0f} |")
    if res["ratios"]:
        lines += ["", "| comparison | ratio |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    write_text("\n".join(lines) + "\n", path)


def plot(path: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(path).read_text())
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['hidden']}\n{r['path']}\n{r['precision']}" + ("" if r.get("recurrent", "auto") == "auto" else f"\nrec {r['recurrent']}") for r in rows]
    colors = {"dense": "tab:gray", "masked": "tab:orange", "bsr": "tab:blue"}
    ax.bar(range(len(rows)), [r["step_ms"] for r in rows], color=[colors[r["path"]] for r in rows],
           yerr=[[r["step_ms"] - r["spread_ms"][0] for r in rows], [r["spread_ms"][1] - r["step_ms"] for r in rows]])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("training step (ms, median)")
    ax.set_yscale("log")
    ax.set_title(f"GRU 3×W training step, batch {res['batch']}×{res['frames']}, {res['threads']} threads "
                 f"(gray dense, orange 90% masked, blue 90% block-sparse)")
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return [out]


def run(out_dir: str, *, quick: bool = False, threads: int | None = None, rounds: int = 5, batch: int = 24,
        frames: int = 230) -> Path:
    cases = default_cases(quick)
    if quick:
        batch, frames, rounds = 4, 60, 2
    res = measure(cases, batch=batch, frames=frames, rounds=rounds, threads=threads)
    res["command"] = "bsrnn bench training" + (" --quick" if quick else "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("training_quick.json" if quick else "training.json")
    write_json(res, path)
    write_markdown(res, path.with_suffix(".md"))
    return path


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    sys.exit("usage: bsrnn bench training [--quick] (this module's own entry point is the peak-memory child)")
