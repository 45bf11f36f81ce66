"""End-to-end training on a handful of real TTS utterances: learning, exact resume, NaN handling.

The corpus is made by the data pipeline (espeak-ng / flite) in a temporary directory, so
these tests exercise the real features, batching, model, CTC, sparsity method and checkpoints.
"""

import json
import math
import shutil

import pytest
import torch

from bsrnn.data.synth import synthesize
from bsrnn.train import TrainingDiverged, evaluate_checkpoint, load_config, train
from bsrnn.train.checkpoint import load_checkpoint
from bsrnn.train.evaluate import model_from_config

PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today",
           "time flies like an arrow", "we need more light here"]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("flite") is None,
                                reason="needs espeak-ng or flite to synthesize the test utterances")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, n_utts=10, dev_size=2, test_size=2, unseen_voice_test_size=2, prompts=PROMPTS,
               workers=1, progress=False, seed=3)
    return out  # train holds 4 utterances


def tiny(corpus, run_dir, *extra):
    """A model small enough that the tests stay fast; one thread so timing noise cannot matter."""
    return load_config(None, [
        f"data.corpus={corpus}", f"train.run_dir={run_dir}", "data.test=['test']",
        "model.preset=gru32", "model.hidden=24", "model.conv_channels=4", "train.threads=1",
        "train.batch_size=2", "train.epochs=3", "schedule.warmup_steps=2", "schedule.decay_start=2",
        "log.progress=false", "log.tensorboard=false", "log.every=1", *extra])


def test_tiny_model_overfits_a_handful_of_utterances(corpus, tmp_path):
    # One wide GRU layer learns these 4 utterances about twice as fast as a deep narrow stack.
    cfg = tiny(corpus, tmp_path / "run", "model.hidden=64", "model.layers=1", "model.conv_channels=8",
               "train.batch_size=4", "train.epochs=110", "optim.lr=1e-2", "schedule.decay_start=1000",
               "data.dev=train", "data.test=['train']", "train.checkpoint_every=100000")
    report = train(cfg)
    rows = [r for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:] if ",train," in r]
    losses = [float(r.split(",")[3]) for r in rows]
    assert losses[-1] < 0.2 * losses[0]  # CTC loss falls
    result = report["splits"]["train"]
    assert result["cer"] < 10.0, result["examples"]  # greedy decoding recovers the text
    assert any(e["hyp"] == e["ref"] for e in result["examples"]), result["examples"]


def _states(path):
    ckpt = load_checkpoint(path)
    position = {k: v for k, v in ckpt["position"].items() if k != "seconds"}  # wall-clock times differ
    return ckpt["model"], ckpt["optimizer"], ckpt["sparsity"], position, ckpt["rng"]


def _assert_identical(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_interruption_equals_the_uninterrupted_run(corpus, tmp_path, precision):
    # Block pruning (masks change during the run) and SpecAugment (draws from the RNG) on,
    # so every piece of state that a resume must restore matters; bit-exact in either precision.
    sparse = ["sparsity.method=bp", "sparsity.block=[4,4]", "sparsity.exclude=['output.*']",
              "sparsity.freq=1", "sparsity.start=1", "sparsity.ramp=2", "sparsity.end=4", "sparsity.target=0.5",
              "features.spec_augment=true", "train.checkpoint_every=1000", f"train.precision={precision}",
              "train.recurrent_precision=bf16"]
    train(tiny(corpus, tmp_path / "whole", *sparse))
    stopped = train(tiny(corpus, tmp_path / "split", *sparse, "train.max_steps=3"))
    assert stopped["stopped_at"] == {**stopped["stopped_at"], "step": 3, "epoch": 1, "batch": 1}
    train(tiny(corpus, tmp_path / "split", *sparse))  # resumes from last.pt, mid-epoch
    whole, split = _states(tmp_path / "whole" / "last.pt"), _states(tmp_path / "split" / "last.pt")
    _assert_identical(whole, split)
    masks = whole[2]["masks"]
    assert any(not bool(m.all()) for m in masks.values())  # pruning actually happened
    report = json.loads((tmp_path / "split" / "report.json").read_text())
    assert report["sparsity"] > 0.3 and report["splits"]["test"]["utterances"] == 2


def test_auto_precision_is_resolved_in_the_saved_config_and_a_change_is_refused(corpus, tmp_path):
    from bsrnn.models.precision import default_precision

    train(tiny(corpus, tmp_path / "run", "train.epochs=1", "train.max_steps=1"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == default_precision()  # "auto" never reaches a saved config
    other = "fp32" if default_precision() == "bf16" else "bf16"
    with pytest.raises(ValueError, match=f"trained with train.precision = '{default_precision()}', not '{other}'"):
        train(tiny(corpus, tmp_path / "run", "train.epochs=1", f"train.precision={other}"))


def test_a_run_from_before_the_precision_key_resumes_as_the_fp32_run_it_was(corpus, tmp_path):
    from bsrnn.train.loop import check_resumable
    from bsrnn.train.config import config_to_dict

    old = config_to_dict(tiny(corpus, tmp_path / "run"))
    del old["train"]["precision"], old["train"]["recurrent_precision"]
    check_resumable(old, config_to_dict(tiny(corpus, tmp_path / "run", "train.precision=fp32")), "last.pt")
    with pytest.raises(ValueError, match="trained with train.precision = 'fp32', not 'bf16'"):
        check_resumable(old, config_to_dict(tiny(corpus, tmp_path / "run", "train.precision=bf16")), "last.pt")


def test_precision_config_values_are_checked(corpus, tmp_path):
    with pytest.raises(ValueError, match="train.precision = .fp16. is not one of auto, fp32, bf16"):
        tiny(corpus, tmp_path / "run", "train.precision=fp16")
    with pytest.raises(ValueError, match="model.subsample must be >= 1"):
        tiny(corpus, tmp_path / "run", "model.subsample=0")


@pytest.mark.parametrize("method", [["sparsity.method=static", "sparsity.target=0.75"],
                                    ["sparsity.method=bp", "sparsity.freq=1", "sparsity.start=1", "sparsity.ramp=2",
                                     "sparsity.end=3", "sparsity.target=0.75"]])
def test_block_sparse_kernels_train_the_model_the_dense_path_trains(corpus, tmp_path, method, capsys):
    from bsrnn.models.recurrent import BSR_ATTR
    from bsrnn.train.build import model_from_config

    sets = [*method, "sparsity.block=[4,4]", "sparsity.exclude=['output.*']", "train.precision=fp32"]
    runs = {}
    for kernels in ("off", "auto"):
        cfg = tiny(corpus, tmp_path / kernels, *sets, f"train.sparse_kernels={kernels}")
        model = model_from_config(cfg.model)
        train(cfg, model=model)
        runs[kernels] = (model, load_checkpoint(tmp_path / kernels / "last.pt")["model"])
    assert getattr(runs["off"][0].rnn, BSR_ATTR, None) is None
    assert getattr(runs["auto"][0].rnn, BSR_ATTR, None) is not None  # the kernels really trained it
    first = 0 if "static" in method[0] else 3  # static from the start, BP once pruning has ended
    assert f"step {first}: masks fixed, rnn now train on block-sparse kernels" in capsys.readouterr().out
    for name, w in runs["off"][1].items():
        torch.testing.assert_close(runs["auto"][1][name], w, rtol=1e-4, atol=1e-5, msg=name)
        # the block-sparse path skips re-zeroing pruned entries after each step (exact zero
        # gradients there): they are still exactly zero, not merely close to it
        assert not runs["auto"][1][name][w == 0].any(), name


def test_resuming_under_a_different_config_is_refused(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", "train.epochs=1"))
    with pytest.raises(ValueError, match="last.pt was trained with optim.lr = 0.0015, not 0.01; use another"):
        train(tiny(corpus, tmp_path / "run", "train.epochs=1", "optim.lr=0.01"))


def test_eval_command_scores_a_checkpoint(corpus, tmp_path):
    train(tiny(corpus, tmp_path / "run", "train.epochs=1", "log.tensorboard=true"))
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    # last.pt, written after best.pt at the epoch's end, knows the best so far (a run resumed
    # from it compares the next epochs with the same best as the uninterrupted run)
    best_key = load_checkpoint(tmp_path / "run" / "best.pt")["position"]["best_key"]
    assert math.isfinite(best_key[1]) and load_checkpoint(tmp_path / "run" / "last.pt")["position"]["best_key"] == best_key
    assert (tmp_path / "run" / "stats.json").is_file() and (tmp_path / "run" / "config.json").is_file()
    out = evaluate_checkpoint(tmp_path / "run" / "best.pt", ["test", str(corpus / "dev.jsonl")])
    assert set(out["splits"]) == {"test", str(corpus / "dev.jsonl")}
    assert all(0.0 <= r["cer"] and r["utterances"] == 2 for r in out["splits"].values())


def _nan_on(model, bad_calls):
    """Make the output layer return NaN on the given training-mode forward calls."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if not module.training:
            return output
        calls["n"] += 1
        return output * math.nan if calls["n"] in bad_calls else output
    model.output.register_forward_hook(hook)
    return model


def test_a_nan_batch_is_skipped_and_counted(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path / "run", "train.epochs=2")
    torch.manual_seed(0)
    report = train(cfg, model=_nan_on(model_from_config(cfg.model), {2}))
    assert report["bad_batches"] == 1 and report["steps"] == 4
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_too_many_nan_batches_stop_training_with_a_clear_message(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path / "run", "train.max_bad_batches=2", "train.epochs=5")
    model = _nan_on(model_from_config(cfg.model), set(range(1, 100)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="3 batches had a non-finite loss .*train.max_bad_batches = 2"):
        train(cfg, model=model)
    for k, v in model.state_dict().items():  # skipped batches touch neither weights nor BN statistics
        assert torch.equal(v, before[k]), k
