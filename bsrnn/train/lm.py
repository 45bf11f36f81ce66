"""Language-model training: truncated BPTT with a sparsity method, evaluation, sampling.

The LM side of issue 6 (BSRNN §1, §6): the speech loop's machinery (typed TOML config with
``--set`` overrides; ``engine.py``'s checkpoints, resume and optimizer update with its
non-finite guard; CSV/TensorBoard logs; ``build_method``) around one visible loop. An LM config
says ``task = "lm"`` at its top, so that ``bsrnn train`` runs this loop as ``bsrnn lm-train`` does.

The training stream is cut into ``batch_size`` contiguous columns; each step reads the next
``bptt`` rows, carries the hidden state over from the previous window (detached: gradients stop
at the boundary) and resets it at each epoch start:

    window → forward → cross-entropy + ``method.penalty()`` → backward → clip → ``optimizer.step()``
    → ``method.step(step)`` → log

``step`` is the only clock: the window, the learning rate (warm-up then cosine decay) and the
pruning schedule are functions of it. A checkpoint holds the carried hidden state as well as the
model, optimizer, masks, RNG states and config, so a resumed run is bit-exact on CPU. Quality is
cross-entropy in nats per token, perplexity ``exp(loss)`` and bits per token ``loss / ln 2``
(bits per character for character models).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bsrnn.atomic import write_json
from bsrnn.data.textcorpus import TextCorpus, Vocab, build_corpus
from bsrnn.models.lm import RecurrentLM, count_params, detach_state
from bsrnn.models.precision import resolve as resolve_precision
from bsrnn.sparsity import SparsityConfig, build_method

from .checkpoint import load_checkpoint
from .config import LogConfig, OptimConfig, build_config, check_task, load_table
from .engine import TrainingDiverged  # noqa: F401 (importable from here, as before the engine)
from .engine import Checkpointer, TrainStep, make_optimizer, prepare_run_dir, seed_everything
from .memory import bound_primitive_cache
from .metrics import RunLog


@dataclass
class LMDataConfig:
    source: str = "wordnet"  # wordnet | shakespeare | kjv | text (bsrnn.data.textcorpus)
    level: str = "char"  # char | word
    path: str = ""  # source file/folder ("" = the source's default; required for text)
    cache_dir: str = "data/text/cache"  # encoded corpora are cached here
    max_chars: int = 0  # use a seeded slice of about this many characters; 0 = everything
    vocab_size: int = 10000  # word level: most frequent words kept (with <unk>, <eos>)
    min_count: int = 1  # symbols seen fewer times in train become unknown
    split: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train/valid/test documents
    seed: int = 0  # seeds the document shuffle behind the splits
    # speech manifests / corpus folders whose held-out (dev, test) prompts are removed from the text,
    # so that fusion with a speech model does not score sentences the LM has read (docs/decoding.md §3)
    exclude: list[str] = field(default_factory=list)
    normalize: str = "none"  # none | speech (cut glosses at ';', ASR-normalised, a-z ' and space only)

    def __post_init__(self):
        if self.normalize not in ("none", "speech"):
            raise ValueError(f"config key data.normalize = {self.normalize!r} is not one of none, speech")


@dataclass
class LMModelConfig:
    rnn_type: str = "lstm"  # lstm | gru
    emb: int = 64  # embedding size
    hidden: int = 256  # recurrent units per layer
    layers: int = 1  # recurrent layers
    dropout: float = 0.0  # on embeddings, between layers and before the decoder
    tie: bool = False  # share embedding and decoder weights (needs emb == hidden)

    def __post_init__(self):
        if self.rnn_type not in ("lstm", "gru"):
            raise ValueError(f"config key model.rnn_type = {self.rnn_type!r} is not one of lstm, gru")


@dataclass
class LMTrainConfig:
    run_dir: str = "runs/lm"  # checkpoints, logs, report
    steps: int = 2000  # optimizer steps in total (TBPTT windows)
    batch_size: int = 32  # contiguous streams trained side by side
    bptt: int = 64  # tokens per truncated-BPTT window
    warmup_steps: int = 50  # linear learning-rate warm-up
    min_lr: float = 0.1  # cosine decay ends at lr * min_lr; 1 = constant learning rate
    seed: int = 0  # model init and dropout
    threads: int = 1  # torch intra-op threads; 0 = torch's default
    eval_every: int = 100  # steps between validation passes (the loss curve)
    eval_tokens: int = 20000  # tokens of valid per periodic pass; 0 = all (final report uses all)
    eval_batch: int = 16  # streams in evaluation
    checkpoint_every: int = 200  # steps between checkpoints
    max_bad_batches: int = 20  # stop after this many non-finite losses
    max_steps: int = 0  # stop after this many steps in total (then resume); 0 = no limit
    resume: bool = True  # continue from <run_dir>/last.pt when it exists
    precision: str = "auto"  # fp32 | bf16 (decoder in bf16; recurrence and loss fp32) | auto = bf16 where native
    recurrent_precision: str = "fp32"  # the LM's fused nn.LSTM/GRU always runs its recurrence in fp32

    def __post_init__(self):
        for name in ("steps", "batch_size", "bptt", "eval_every", "eval_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LMConfig:
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: LMModelConfig = field(default_factory=LMModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, grad_clip=1.0))
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=20))
    task: str = "lm"  # top-level key: lm (this config) | speech (bsrnn.train.config.Config)

    def __post_init__(self):
        check_task(self.task, "lm")


# What a resumed run may change: where it stops, how it logs and evaluates, how many threads it
# uses, where the corpus cache is (evaluation draws no random numbers and leaves the model as it was).
LM_RESUME_FREE = {"train": {"max_steps", "resume", "threads", "checkpoint_every", "max_bad_batches", "run_dir",
                            "eval_every", "eval_tokens", "eval_batch"},
                  "log": None, "data": {"cache_dir"}}


def lm_resume_defaults() -> dict:
    """A key missing from a saved LM config meant its default; runs from before
    ``train.precision`` existed trained in fp32."""
    defaults = lm_config_to_dict(LMConfig())
    defaults["train"]["precision"] = "fp32"
    return defaults


def load_lm_config(path: str | Path | None = None, overrides=()) -> LMConfig:
    """Defaults ← TOML file ← ``--set`` overrides, type-checked like the speech config."""
    return build_config(LMConfig, load_table(path, overrides))


def lm_config_to_dict(cfg: LMConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def open_corpus(d: LMDataConfig) -> TextCorpus:
    return build_corpus(d.source, d.level, path=d.path or None, cache_dir=d.cache_dir or None,
                        max_chars=d.max_chars, vocab_size=d.vocab_size, min_count=d.min_count,
                        fractions=tuple(d.split), seed=d.seed, exclude=tuple(d.exclude), normalize=d.normalize)


def model_from_config(m: LMModelConfig, vocab_size: int) -> RecurrentLM:
    return RecurrentLM(vocab_size, rnn_type=m.rnn_type, emb=m.emb, hidden=m.hidden, layers=m.layers,
                       dropout=m.dropout, tie=m.tie)


def batchify(stream: torch.Tensor, batch: int) -> torch.Tensor:
    """``(L,)`` → ``(L // batch, batch)``: column j is the j-th contiguous slice of the stream."""
    rows = stream.numel() // batch
    if rows < 2:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for {batch} columns of 2+ tokens")
    return stream[: rows * batch].view(batch, rows).t().contiguous()  # (rows, N)


def window(data: torch.Tensor, index: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of TBPTT window ``index``, each ``(T, N)``, T <= bptt."""
    start = index * bptt
    seq = min(bptt, data.shape[0] - 1 - start)
    return data[start: start + seq], data[start + 1: start + 1 + seq]


def n_windows(data: torch.Tensor, bptt: int) -> int:
    return math.ceil((data.shape[0] - 1) / bptt)


def lr_at(step: int, lr: float, t: LMTrainConfig) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``lr * min_lr`` at ``t.steps``; pure in ``step``."""
    if step < t.warmup_steps:
        return lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1))
    return lr * (t.min_lr + (1 - t.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: RecurrentLM, stream: torch.Tensor, *, batch: int = 16, bptt: int = 64,
             max_tokens: int = 0) -> dict:
    """Cross-entropy (nats/token), perplexity and bits/token of ``stream``, state carried throughout."""
    if max_tokens:
        stream = stream[: max_tokens + 1]
    data = batchify(stream, min(batch, max(stream.numel() // 2, 1)))
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for i in range(n_windows(data, bptt)):
        x, y = window(data, i, bptt)
        logits, state = model(x, state)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700)), "bits": loss / math.log(2), "tokens": count}


class LMLog(RunLog):
    FIELDS = ("step", "epoch", "split", "loss", "bits", "ppl", "penalty", "lr", "grad_norm", "sparsity",
              "bad_batches", "seconds")


def train_lm(cfg: LMConfig, *, on_step=None) -> dict:
    """Train (or resume) the LM run of ``cfg``; returns the final report (or the stop position).

    ``on_step(step, model, method)`` is called after every completed step (tests, monitoring).
    """
    bound_primitive_cache()  # before the first oneDNN op (bsrnn.train.memory)
    # "auto" precision is resolved before the config is saved (a resume elsewhere compares it)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision)))
    run_dir = prepare_run_dir(cfg.train.run_dir)
    write_json(lm_config_to_dict(cfg), run_dir / "config.json")  # the resolved config beside the outputs
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    corpus = open_corpus(cfg.data)
    data = batchify(corpus.train, cfg.train.batch_size)  # (rows, N)
    per_epoch = n_windows(data, cfg.train.bptt)
    model = model_from_config(cfg.model, len(corpus.vocab))
    optimizer = make_optimizer(cfg.optim, model)
    method = build_method(model, cfg.sparsity, steps_per_epoch=per_epoch, total_steps=cfg.train.steps,
                          optimizer=optimizer)
    pos = {"step": 0, "bad_batches": 0, "seconds": 0.0, "best_key": [math.inf, math.inf]}
    state = None  # the hidden state carried from one window to the next

    def extra() -> dict:  # what an LM checkpoint holds besides the shared state
        return {"kind": "lm", "hidden": list(state) if isinstance(state, tuple) else state,
                "vocab": corpus.vocab.itos, "level": corpus.vocab.level}

    checkpoints = Checkpointer(run_dir, model=model, optimizer=optimizer, method=method,
                               config=lm_config_to_dict(cfg), extra=extra)
    resumed = checkpoints.resume(LM_RESUME_FREE, defaults=lm_resume_defaults()) if cfg.train.resume else None
    if resumed is not None:
        pos, state = dict(resumed["position"]), resumed["hidden"]
        state = tuple(state) if isinstance(state, list) else state
    trainer = TrainStep(model, optimizer, method, lr_at=lambda step: lr_at(step, cfg.optim.lr, cfg.train),
                        grad_clip=cfg.optim.grad_clip, max_bad_batches=cfg.train.max_bad_batches,
                        units=("window", "windows"), advice="lower optim.lr or optim.grad_clip",
                        last=checkpoints.last, precision=cfg.train.precision,
                        recurrent_precision=cfg.train.recurrent_precision)

    log = LMLog(run_dir, tensorboard=cfg.log.tensorboard)
    started, seconds0, window_losses = time.perf_counter(), pos["seconds"], []
    try:
        model.train()
        while pos["step"] < cfg.train.steps:
            step = pos["step"]
            index = step % per_epoch
            if index == 0:
                state = None  # a new pass over the stream starts from a zero state
            lr = trainer.set_lr(step)

            # --- the training step -----------------------------------------------------------
            x, y = window(data, index, cfg.train.bptt)  # (T, N), (T, N)
            with trainer.forward(step):
                logits, new_state = model(x, detach_state(state))  # (T, N, V)
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            penalty = method.penalty()
            done = trainer.update(ce + penalty, step, pos)  # masks updated on schedule
            if done.ok:  # a skipped window does not advance the carried state
                state = detach_state(new_state)
                window_losses.append(float(ce.detach()))
            pos["step"] = step + 1
            pos["seconds"] = seconds0 + time.perf_counter() - started
            # ---------------------------------------------------------------------------------

            if on_step is not None:
                on_step(step, model, method)
            if pos["step"] % cfg.log.every == 0 and window_losses:
                mean = sum(window_losses) / len(window_losses)
                log.write(pos["step"], "train", epoch=pos["step"] / per_epoch, loss=mean, bits=mean / math.log(2),
                          penalty=float(penalty.detach()), lr=lr, grad_norm=done.grad_norm, sparsity=method.sparsity(),
                          bad_batches=pos["bad_batches"], seconds=pos["seconds"])
                window_losses = []
            if pos["step"] % cfg.train.eval_every == 0 or pos["step"] == cfg.train.steps:
                v = evaluate(model, corpus.valid, batch=cfg.train.eval_batch, bptt=cfg.train.bptt,
                             max_tokens=cfg.train.eval_tokens)
                log.write(pos["step"], "valid", epoch=pos["step"] / per_epoch, loss=v["loss"], bits=v["bits"],
                          ppl=v["ppl"], sparsity=method.sparsity(), seconds=pos["seconds"])
                if cfg.log.progress:
                    print(f"step {pos['step']}/{cfg.train.steps}: valid {v['bits']:.3f} bits/token, "
                          f"sparsity {method.sparsity():.3f}, {pos['seconds']:.0f} s", flush=True)
                checkpoints.save_if_best(pos, method.sparsity(), v["loss"])
            if pos["step"] % cfg.train.checkpoint_every == 0 or pos["step"] == cfg.train.steps:
                checkpoints.save(pos)
            if cfg.train.max_steps and pos["step"] >= cfg.train.max_steps and pos["step"] < cfg.train.steps:
                checkpoints.save(pos)
                return {"stopped_at": dict(pos), "run_dir": str(run_dir)}
    finally:
        log.close()
    method.finish()  # e.g. group lasso's final block threshold, before the final evaluation
    return final_report(cfg, model, method, corpus, pos, run_dir)


def final_report(cfg: LMConfig, model, method, corpus: TextCorpus, pos: dict, run_dir: Path) -> dict:
    """Parameters, per-layer sparsity and full valid/test quality of the trained model → report.json."""
    total, nonzero = count_params(model)
    splits = {name: evaluate(model, corpus.split(name), batch=cfg.train.eval_batch, bptt=cfg.train.bptt)
              for name in ("valid", "test")}
    report = {"config": lm_config_to_dict(cfg), "corpus": corpus.meta, "params": total, "nonzero_params": nonzero,
              "sparsity": method.report().to_dict(), "steps": pos["step"], "bad_batches": pos["bad_batches"],
              "train_seconds": pos["seconds"], "level": corpus.vocab.level, **{
                  f"{name}_{k}": v[k] for name, v in splits.items() for k in ("loss", "ppl", "bits")}}
    write_json(report, run_dir / "report.json")
    return report


@torch.no_grad()
def sample(model: RecurrentLM, vocab: Vocab, n: int = 300, *, temperature: float = 0.8, seed: int = 0,
           prime: str = "\n") -> str:
    """``n`` tokens after ``prime``; ``temperature`` 0 is greedy (argmax) decoding."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    ids = vocab.encode(prime) or [vocab.unk]
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    logits, state = model(torch.tensor(ids).view(-1, 1))  # (T, 1, V)
    out = []
    for _ in range(n):
        last = logits[-1, 0]
        nxt = int(last.argmax()) if temperature == 0 else int(
            torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
    return vocab.decode(out)


def load_lm(path: str | Path) -> tuple[RecurrentLM, Vocab, LMConfig]:
    """The model, vocabulary and config of an LM checkpoint (no corpus needed)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "lm":
        raise ValueError(f"checkpoint {path} is not a language-model checkpoint (written by bsrnn lm-train)")
    cfg = build_config(LMConfig, json.loads(ckpt["config"]))
    vocab = Vocab(ckpt["vocab"], ckpt["level"])
    model = model_from_config(cfg.model, len(vocab))
    model.load_state_dict(ckpt["model"])
    return model, vocab, cfg
