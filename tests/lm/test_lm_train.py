"""The LM training loop: sparse-throughout methods hold their sparsity, exact resume, errors, CLI."""

import json
import random

import pytest
import torch

from bsrnn.train.lm import load_lm, load_lm_config, train_lm
from bsrnn.cli import main as lm_main
from bsrnn.train.loop import TrainingDiverged

WORDS = "the a cat dog sat ran on in under big small red house tree".split()


@pytest.fixture()
def corpus(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(300)))
    return path


def tiny(tmp_path, corpus, run="run", *extra):
    return load_lm_config(None, [
        "data.source=text", f"data.path={json.dumps(str(corpus))}", f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}",
        "model.emb=8", "model.hidden=16", "train.batch_size=4", "train.bptt=8", "train.steps=12",
        "train.warmup_steps=2", "train.eval_every=4", "train.eval_tokens=200", "train.checkpoint_every=100",
        f"train.run_dir={json.dumps(str(tmp_path / run))}", "log.tensorboard=false", "log.progress=false",
        "log.every=2", "sparsity.exclude=['decoder.*']", *extra])


@pytest.mark.parametrize("method", ["static", "rigl", "set"])
def test_sparse_throughout_holds_its_sparsity_at_every_step(tmp_path, corpus, method):
    cfg = tiny(tmp_path, corpus, "r", f"sparsity.method={method}", "sparsity.target=0.75", "sparsity.freq=2")
    seen, masks = [], []

    def check(step, model, m):
        seen.append(m.sparsity())
        for name, p in model.named_parameters():
            if name in m.masks.params:  # pruned blocks hold exact zeros in the weights themselves
                assert not p.detach()[~m.masks.keep(name)].any(), (step, name)
                assert float(m.masks.block_masks[name].float().mean()) == pytest.approx(0.25)
        masks.append({k: v.clone() for k, v in m.masks.block_masks.items()})

    report = train_lm(cfg, on_step=check)
    assert len(seen) == 12 and all(s == pytest.approx(0.75) for s in seen)
    changed = any(not torch.equal(a[k], b[k]) for a, b in zip(masks, masks[1:]) for k in a)
    assert changed == (method != "static")  # RigL/SET move blocks, static never does
    assert report["sparsity"]["layer_sparsity"] == pytest.approx(0.75)
    assert {r["name"] for r in report["sparsity"]["rows"]} == {"rnn.weight_ih_l0", "rnn.weight_hh_l0"}


@pytest.mark.parametrize("method", ["rigl", "bp"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, corpus, method, precision):
    sets = [f"sparsity.method={method}", "sparsity.target=0.75", "sparsity.freq=2", "model.dropout=0.1",
            f"train.precision={precision}"]
    if method == "bp":
        sets += ["sparsity.start=2", "sparsity.ramp=4", "sparsity.end=8"]
    whole = train_lm(tiny(tmp_path, corpus, "whole", *sets))
    stopped = train_lm(tiny(tmp_path, corpus, "split", *sets, "train.max_steps=5"))
    assert stopped["stopped_at"]["step"] == 5
    resumed = train_lm(tiny(tmp_path, corpus, "split", *sets))
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bit-exact on CPU
    for k, v in a["sparsity"]["masks"].items():
        assert torch.equal(v, b["sparsity"]["masks"][k]), k
    assert resumed["test_loss"] == whole["test_loss"] and resumed["sparsity"] == whole["sparsity"]


def test_a_checkpoint_with_the_dropped_scheduler_and_sampler_entries_still_resumes(tmp_path, corpus):
    # Checkpoints once carried "scheduler" and "sampler" entries that nothing read; one written
    # so must load and resume exactly as a current one does.
    from bsrnn.train.checkpoint import load_checkpoint, save_checkpoint
    sets = ["sparsity.method=bp", "sparsity.target=0.5", "sparsity.freq=2", "sparsity.start=2", "sparsity.ramp=4",
            "sparsity.end=8"]
    whole = train_lm(tiny(tmp_path, corpus, "whole", *sets))
    train_lm(tiny(tmp_path, corpus, "old", *sets, "train.max_steps=5"))
    last = tmp_path / "old" / "last.pt"
    ckpt = load_checkpoint(last)
    assert "scheduler" not in ckpt and "sampler" not in ckpt
    save_checkpoint({**ckpt, "scheduler": {"lr": 1e-3}, "sampler": {"seed": 0, "epoch": 0, "skip": 5}}, last)
    assert "scheduler" in torch.load(last, weights_only=True)  # on disk as an old checkpoint had it
    resumed = train_lm(tiny(tmp_path, corpus, "old", *sets))
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert resumed["test_loss"] == whole["test_loss"]


def test_resuming_under_a_config_that_changes_the_run_is_refused(tmp_path, corpus):
    train_lm(tiny(tmp_path, corpus, "r", "train.max_steps=4"))
    with pytest.raises(ValueError, match=r"last.pt was trained with optim.lr = 0.002, not 0.01; use another"):
        train_lm(tiny(tmp_path, corpus, "r", "optim.lr=0.01"))
    # where it stops, how often it evaluates and checkpoints may change
    report = train_lm(tiny(tmp_path, corpus, "r", "train.eval_every=6", "train.checkpoint_every=3"))
    assert report["steps"] == 12


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(tmp_path, corpus):
    cfg = tiny(tmp_path, corpus, "nan", "optim.lr=inf", "train.warmup_steps=0",
               "train.max_bad_batches=3")  # the first step blows the weights up to inf/NaN
    with pytest.raises(TrainingDiverged, match=r"4 windows had a non-finite loss .*train.max_bad_batches = 3"):
        train_lm(cfg)


@pytest.mark.parametrize("override, message", [
    ("train.bptt=0", "config key train.bptt must be >= 1, got 0"),
    ("model.rnn_type=rnn", "config key model.rnn_type = 'rnn' is not one of lstm, gru"),
    ("model.hidden=big", "config key model.hidden must be int, got 'big'"),
    ("data.levels=char", "config key data.levels is unknown"),
    ("sparsity.method=magic", "sparsity.method 'magic' is not one of"),
])
def test_config_errors_are_one_sentence(override, message):
    with pytest.raises(ValueError) as e:
        load_lm_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_trains_samples_and_reports_bad_input(tmp_path, corpus, capsys):
    cfg_path = tmp_path / "lm.toml"
    cfg_path.write_text('[train]\nsteps = 6\n')
    run = tmp_path / "cli"
    sets = [f"data.path={json.dumps(str(corpus))}", "data.source=text", f"train.run_dir={json.dumps(str(run))}",
            f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}", "model.hidden=16", "model.emb=8",
            "train.batch_size=4", "train.bptt=8", "log.tensorboard=false", "log.progress=false"]
    assert lm_main(["lm-train", "--config", str(cfg_path), "--set", *sets]) == 0
    assert "bits/char" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 6 and report["nonzero_params"] == report["params"]
    assert lm_main(["lm-sample", str(run / "last.pt"), "--chars", "40", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert lm_main(["lm-sample", str(run / "last.pt"), "--chars", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first and len(first) >= 41  # the prime newline + 40 characters
    model, vocab, cfg = load_lm(run / "last.pt")
    assert len(vocab) == model.decoder.out_features and cfg.train.steps == 6
    assert lm_main(["lm-train", "--set", "train.stepz=1"]) == 2
    assert "config key train.stepz is unknown" in capsys.readouterr().err
    assert lm_main(["lm-train", "--config", str(cfg_path), "--set", *sets, "model.hidden=32"]) == 2
    # one sentence naming the key, not a shape traceback
    assert "last.pt was trained with model.hidden = 16, not 32; use another train.run_dir" in capsys.readouterr().err


def test_shipped_lm_configs_load_and_name_their_task():
    import tomllib
    from pathlib import Path

    from bsrnn.train.lm_cli import is_lm_config
    configs = sorted(Path(__file__).resolve().parents[2].glob("configs/lm_*.toml"))
    assert len(configs) >= 3
    for path in configs:
        cfg = load_lm_config(path)
        assert cfg.sparsity.exclude == ["decoder.*"], path  # the output layer is never pruned (docs/method.md §7)
        assert tomllib.loads(path.read_text())["task"] == "lm" == cfg.task, path
        assert is_lm_config(str(path))
    speech = Path(__file__).resolve().parents[2] / "configs" / "main_dense.toml"
    assert not is_lm_config(str(speech)) and not is_lm_config(None, ["optim.lr=1e-3"])
    assert is_lm_config(None, ["task=lm"])


def test_the_task_key_decides_and_configs_older_than_it_still_work(tmp_path):
    from bsrnn.train import config, lm_cli
    from bsrnn.train.config import load_config, task_of
    from bsrnn.train.lm_cli import is_lm_config
    assert lm_cli.LM_KEYS is config.LM_KEYS  # the old home of the LM-only keys
    old = tmp_path / "old_lm.toml"  # an LM config from before the task key: recognised by its LM-only keys
    old.write_text('[data]\nsource = "text"\nlevel = "word"\n[train]\nbptt = 16\n')
    assert is_lm_config(str(old)) and is_lm_config(None, ["data.level=word"])
    assert load_lm_config(old).task == "lm" and load_lm_config(old).train.bptt == 16
    assert task_of({"task": "speech", "data": {"source": "text"}}) == "speech"  # the key wins over the sniff
    with pytest.raises(ValueError, match=r"^config key task = 'vision' is not one of speech, lm$"):
        task_of({"task": "vision"})
    with pytest.raises(ValueError, match=r"^config key task = 'lm': this is a lm config, not a speech one; train it "
                                         r"with bsrnn train \(which reads the task\) or load it with "
                                         r"bsrnn.train.lm.load_lm_config$"):
        load_config(None, ["task=lm"])
    with pytest.raises(ValueError, match=r"config key task = 'speech': this is a speech config, not a lm one"):
        load_lm_config(None, ["task=speech"])


def test_bsrnn_train_runs_an_lm_config_by_its_task(tmp_path, corpus, capsys):
    cfg_path = tmp_path / "lm.toml"
    cfg_path.write_text('task = "lm"\n[train]\nsteps = 4\n')
    sets = [f"data.path={json.dumps(str(corpus))}", f"train.run_dir={json.dumps(str(tmp_path / 'run'))}",
            f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}", "model.hidden=16", "train.batch_size=4",
            "log.tensorboard=false", "log.progress=false"]
    assert lm_main(["train", "--config", str(cfg_path), "--set", "data.source=text", *sets]) == 0
    assert "bits/char" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps"] == 4
    assert lm_main(["eval", str(tmp_path / "run" / "last.pt")]) == 2  # a speech command on an LM checkpoint
    assert "is a language-model checkpoint" in capsys.readouterr().err


def test_word_level_gru_with_tied_weights_trains_and_samples_words(tmp_path, corpus):
    cfg = tiny(tmp_path, corpus, "word", "data.level=word", "data.vocab_size=10", "model.rnn_type=gru",
               "model.emb=16", "model.tie=true", "sparsity.method=bp", "sparsity.target=0.5", "sparsity.freq=2",
               "sparsity.start=2", "sparsity.ramp=4", "sparsity.end=8")
    report = train_lm(cfg)
    assert report["level"] == "word" and report["corpus"]["vocab"] == 10
    assert report["valid_ppl"] < 10  # better than uniform over the 10 symbols after 12 steps
    assert report["sparsity"]["layer_sparsity"] == pytest.approx(0.5, abs=0.05)
    model, vocab, _ = load_lm(tmp_path / "word" / "last.pt")
    from bsrnn.train.lm import sample
    words = sample(model, vocab, 30, seed=0).split()
    assert words and set(words) <= set(vocab.itos)


@pytest.mark.slow
def test_char_lstm_bp_config_learns_wordnet_at_90_percent(tmp_path):
    from pathlib import Path
    config = Path(__file__).resolve().parents[2] / "configs" / "lm_char_lstm_bp.toml"
    cfg = load_lm_config(config, ["data.max_chars=300000", "train.steps=300", "train.eval_every=100",
                                  f"train.run_dir={json.dumps(str(tmp_path / 'bp'))}", "log.tensorboard=false",
                                  f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}"])
    report = train_lm(cfg)
    assert report["sparsity"]["layer_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert report["valid_bits"] < 3.6  # uniform over ~80 symbols is 6.3 bits, unigram about 4.3
