"""``bsrnn lm-train`` and ``bsrnn lm-sample``: parse, then call ``bsrnn.train.lm``.

``register(subparsers)`` adds both commands (the ``bsrnn`` index lists this module); the module
is wired into the ``bsrnn`` command line (``bsrnn lm-train --config configs/lm_char_lstm.toml``).
``bsrnn train`` hands a config whose ``task`` is ``"lm"`` to ``lm_train`` (``config.task_of``).
"""

from __future__ import annotations

import argparse
import sys


def __getattr__(name: str):
    if name == "LM_KEYS":  # defined here before the task key; now bsrnn.train.config.LM_KEYS
        from .config import LM_KEYS
        return LM_KEYS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_lm_config(path: str | None, overrides=()) -> bool:
    """Whether ``bsrnn train --config path --set overrides`` describes a language model
    (``task = "lm"``, or in a config older than the key, keys only LM configs have)."""
    from .config import load_table, task_of  # imported when used: ``bsrnn --help`` stays fast
    return task_of(load_table(path, overrides)) == "lm"


def lm_train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointWriteError
    from .engine import TrainingDiverged
    from .lm import load_lm_config, train_lm
    cfg = load_lm_config(args.config, args.set or [])
    try:
        report = train_lm(cfg)
    except (TrainingDiverged, CheckpointWriteError) as e:  # the run stops; its last checkpoint is whole
        print(f"bsrnn: error: {e}", file=sys.stderr)
        return 1
    if "stopped_at" in report:
        print(f"stopped at step {report['stopped_at']['step']}; run the same command again to resume")
        return 0
    unit = "bits/char" if report["level"] == "char" else "bits/word"
    print(f"{cfg.train.run_dir}: {report['params']:,} parameters, {report['nonzero_params']:,} nonzero; "
          f"valid {report['valid_bits']:.3f} {unit} (ppl {report['valid_ppl']:.2f}), "
          f"test {report['test_bits']:.3f} {unit} (ppl {report['test_ppl']:.2f}); "
          f"{report['train_seconds']:.0f} s of training")
    return 0


def lm_sample(args: argparse.Namespace) -> int:
    import torch

    from .lm import load_lm, sample
    torch.set_num_threads(1)
    model, vocab, _ = load_lm(args.checkpoint)
    prime = args.prime.replace("\\n", "\n")  # so "--prime '\n'" means a newline (other text as given)
    print(prime + sample(model, vocab, args.chars, temperature=args.temperature, seed=args.seed, prime=prime))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("lm-train", help="train a character/word recurrent LM with an optional sparsity method",
                              description="Train a language model from a TOML config (configs/lm_*.toml); --set "
                                          "overrides dotted keys, e.g. --set sparsity.method=rigl "
                                          "sparsity.target=0.9. Resumes from <run_dir>/last.pt when present.")
    p.add_argument("--config", help="TOML run configuration (configs/lm_*.toml)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config keys, e.g. train.steps=500 model.rnn_type=gru")
    p.set_defaults(func=lm_train)

    p = subparsers.add_parser("lm-sample", help="sample text from a language-model checkpoint")
    p.add_argument("checkpoint", help="last.pt or best.pt written by bsrnn lm-train")
    p.add_argument("--chars", type=int, default=300, help="tokens to generate (characters or words; default 300)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--prime", default="\\n", help="text to start from (default a newline, a document start)")
    p.set_defaults(func=lm_sample)
