"""Typed run configuration: dataclasses loaded from TOML, overridden with dotted ``--set`` keys.

docs/architecture.md §4. Defaults follow docs/training-on-cpu.md §3 (the recipe that trains on 2 CPU
cores: Adam 1.5e-3 with warm-up and step decay, batch 24, SortaGrad, clipping at 5) and
docs/method.md §16 (Nesterov SGD is the paper's optimizer, available as ``optim.name = "sgd"``). The
``sparsity`` table is the sparsity core's own ``SparsityConfig``, type-checked here like the others
and validated by its ``__post_init__``. Every mistake is one sentence that names the key and what
would be valid; the resolved config is written beside every run's outputs.

The top-level key ``task`` names what a config trains: ``"speech"`` (this module's ``Config``,
the default) or ``"lm"`` (``bsrnn.train.lm.LMConfig``); ``bsrnn train`` reads it to pick the loop
(``task_of``). ``build_config`` turns a table into any of these dataclasses, type-checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from bsrnn.atomic import write_json
from bsrnn.sparsity import SparsityConfig

TASKS = ("speech", "lm")
# Keys only a language-model config has: how a config written before the ``task`` key existed
# is recognised (the speech config's [data] names a corpus of manifests).
LM_KEYS = (("data", "source"), ("data", "level"), ("train", "bptt"), ("model", "emb"), ("model", "tie"))


@dataclass
class DataConfig:
    corpus: str = "data/corpus"  # directory of <split>.jsonl manifests (bsrnn data synth)
    train: str = "train"  # training split name, or a manifest path
    dev: str = "dev"  # split for per-epoch validation and the best checkpoint
    test: list[str] = field(default_factory=lambda: ["test", "test_unseen_voices"])  # final report splits
    cache_dir: str = ""  # feature cache directory; "" = <corpus>/features
    max_train_utts: int = 0  # use only the first N training utterances; 0 = all


@dataclass
class FeaturesConfig:
    spec_augment: bool = False  # SpecAugment masking on training features


@dataclass
class ModelConfig:
    preset: str = "gru128"  # a name in bsrnn.models.PRESETS
    rnn_type: str | None = None  # rnn | gru | lstm; unset = the preset's
    hidden: int | None = None  # units per direction; unset = the preset's
    layers: int | None = None  # recurrent layers; unset = the preset's
    bidirectional: bool | None = None  # unset = the preset's
    lookahead: int | None = None  # row-conv future frames (0 = none); unset = the preset's
    fc_dim: int | None = None  # hidden FC width (0 = none); unset = the preset's
    conv_channels: int | None = None  # channels of both conv layers; unset = the preset's (32)
    subsample: int | None = None  # conv output frames stacked into one (time stride x k); unset = the preset's (1)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam (fast on CPUs, docs/training-on-cpu.md §3) | sgd (Nesterov momentum, the paper)
    lr: float = 1.5e-3  # peak learning rate
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # the paper's dense baselines use no regularisation
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping


@dataclass
class ScheduleConfig:
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    decay_start: int = 2  # first epoch (0-based) at the decayed lr
    decay_every: int = 3  # epochs between decays
    decay_factor: float = 0.5  # lr multiplier per decay


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # checkpoints, logs, stats, report
    epochs: int = 6  # passes over the training split
    batch_size: int = 24  # utterances per batch
    sortagrad: bool = True  # first epoch in length order (Deep Speech 2)
    seed: int = 0  # seeds model init, batching and augmentation
    threads: int = 2  # torch intra-op threads; 0 = torch's default
    checkpoint_every: int = 200  # steps between checkpoints (also at each epoch end)
    max_bad_batches: int = 20  # stop after this many NaN/inf losses
    max_steps: int = 0  # stop after this many steps in total (then resume); 0 = no limit
    resume: bool = True  # continue from <run_dir>/last.pt when it exists
    precision: str = "auto"  # fp32 | bf16 (mixed, fp32 master weights) | auto = bf16 on CPUs with native bf16
    recurrent_precision: str = "auto"  # per-step W_hh·h product under bf16: fp32 | bf16 | auto (by width)
    sparse_kernels: str = "auto"  # auto: GRUs train on block-sparse kernels once masks are fixed | off


@dataclass
class LogConfig:
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = True  # TensorBoard event files in <run_dir>/tb
    every: int = 10  # steps between CSV/TensorBoard rows


def check_task(task: str, expected: str) -> None:
    """The ``task`` of a config that a loader of ``expected`` configs was given."""
    if task not in TASKS:
        raise ValueError(f"config key task = {task!r} is not one of {', '.join(TASKS)}")
    if task != expected:
        loader = {"speech": "bsrnn.train.load_config", "lm": "bsrnn.train.lm.load_lm_config"}[task]
        raise ValueError(f"config key task = {task!r}: this is a {task} config, not a {expected} one; "
                         f"train it with bsrnn train (which reads the task) or load it with {loader}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    task: str = "speech"  # top-level key: speech (this config) | lm (bsrnn.train.lm.LMConfig)

    def __post_init__(self):
        check_task(self.task, "speech")


CHOICES = {"optim.name": ("adam", "sgd"), "model.rnn_type": ("rnn", "gru", "lstm", None),
           "train.precision": ("auto", "fp32", "bf16"), "train.recurrent_precision": ("auto", "fp32", "bf16"), "train.sparse_kernels": ("auto", "off")}
# Numeric ranges: a value outside them would fail later with a message that names no key
# (torch's "Invalid learning rate: -1", the sampler's "batch_size must be >= 1") or silently
# train nothing (epochs = 0).
RANGES = {
    "train.epochs": (lambda v: v >= 1, ">= 1"), "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.checkpoint_every": (lambda v: v >= 1, ">= 1"), "train.max_bad_batches": (lambda v: v >= 0, ">= 0"),
    "train.max_steps": (lambda v: v >= 0, ">= 0 (0 = no limit)"), "train.threads": (lambda v: v >= 0, ">= 0"),
    "log.every": (lambda v: v >= 1, ">= 1"), "data.max_train_utts": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "model.subsample": (lambda v: v is None or v >= 1, ">= 1"),
    "optim.lr": (lambda v: v > 0, "a number > 0"), "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (lambda v: 0 <= v < math.inf, ">= 0"), "optim.grad_clip": (lambda v: 0 <= v, ">= 0 (0 = no clipping)"),
    "schedule.warmup_steps": (lambda v: v >= 0, ">= 0"), "schedule.decay_start": (lambda v: v >= 0, ">= 0"),
    "schedule.decay_every": (lambda v: v >= 1, ">= 1"), "schedule.decay_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
}


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "") if typing.get_args(hint) else getattr(hint, "__name__", str(hint))


def _coerce(value, hint, key: str):
    """``value`` checked against the annotation ``hint`` (an int is a valid float; lists become tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError:
                pass
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = [_coerce(v, args[0] if args else typing.Any, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    elif hint is typing.Any or (hint is float and isinstance(value, (int, float)) and not isinstance(value, bool)):
        # ints stay ints: the sparsity schedule reads 1 as iteration 1 but 1.0 as 100 % of training
        return value
    elif isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"config key {key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def build_config(cls, raw: dict, prefix: str = ""):
    """An instance of dataclass ``cls`` from the table ``raw``; unknown keys and bad types raise.

    ``prefix`` is the dotted key of ``raw`` in the whole config ("" for the top level), for messages.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"config key {prefix} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ValueError(f"config key {where} is unknown; valid keys{' in [' + prefix + ']' if prefix else ''} "
                         f"are {', '.join(names)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, key)
            continue
        kwargs[name] = _coerce(value, hint, key)
        if key in CHOICES and kwargs[name] not in CHOICES[key]:
            raise ValueError(f"config key {key} = {value!r} is not one of "
                             f"{', '.join(str(c) for c in CHOICES[key] if c is not None)}")
        if key in RANGES and not RANGES[key][0](kwargs[name]):
            raise ValueError(f"config key {key} must be {RANGES[key][1]}, got {value!r}")
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], object]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); a value that is not TOML is a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # bare words: presets, paths, method names
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"override {item!r}: {part} is a value, not a table")
        table[path[-1]] = value
    return raw


_build = build_config  # the name before it was public


def load_table(path: str | Path | None = None, overrides=()) -> dict:
    """The raw table of a TOML file (``{}`` without one) with the ``--set`` overrides applied."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    return apply_overrides(raw, list(overrides))


def task_of(raw: dict) -> str:
    """The task a raw config table describes: its ``task`` key. A table without one (written
    before the key existed) is an LM config when it has keys only LM configs have."""
    task = raw.get("task")
    if task is None:
        return "lm" if any(isinstance(raw.get(s), dict) and k in raw[s] for s, k in LM_KEYS) else "speech"
    if task not in TASKS:
        raise ValueError(f"config key task = {task!r} is not one of {', '.join(TASKS)}")
    return task


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: defaults ← TOML file ← ``--set`` overrides."""
    return build_config(Config, load_table(path, overrides))


def config_to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=list))  # tuples -> lists: plain JSON/TOML values


def config_from_dict(d: dict) -> Config:
    return build_config(Config, json.loads(json.dumps(d)))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as JSON (None values included, which TOML cannot hold)."""
    return write_json(config_to_dict(cfg), path)
