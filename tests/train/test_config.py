"""Run configuration: TOML + dotted overrides, type checks, clear errors, round trips."""

from pathlib import Path

import pytest

from bsrnn.train.config import config_from_dict, config_to_dict, load_config, parse_override, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_follow_the_calibrated_recipe():
    cfg = load_config()
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size, cfg.optim.grad_clip) == ("adam", 1.5e-3, 24, 5.0)
    assert cfg.sparsity.method == "none"


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nname = "sgd"\nlr = 0.01\n[sparsity]\nmethod = "bp"\nblock = [4, 4]\n'
                    'exclude = ["output.*"]\n')
    cfg = load_config(path, ["optim.lr=3e-4", "model.preset=gru64", "sparsity.target=0.9", "sparsity.start=200",
                             "data.test=['test']", "train.run_dir=runs/x y"])
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 3e-4
    assert cfg.model.preset == "gru64" and cfg.data.test == ["test"] and cfg.train.run_dir == "runs/x y"
    assert cfg.sparsity.method == "bp" and cfg.sparsity.target == 0.9 and cfg.sparsity.exclude == ["output.*"]
    # An integer stays an integer: the sparsity schedule reads 200 as an iteration, 0.2 as a fraction.
    assert cfg.sparsity.start == 200 and isinstance(cfg.sparsity.start, int)


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "config key optim.lrr is unknown; valid keys in \\[optim\\] are name, lr,"),
    ("trian.epochs=3", "config key trian is unknown; valid keys are data, features, model"),
    ("sparsity.metod=bp", "config key sparsity.metod is unknown; valid keys in \\[sparsity\\] are method"),
    ("optim.lr=fast", "config key optim.lr must be float, got 'fast'"),
    ("train.epochs=2.5", "config key train.epochs must be int, got 2.5"),
    ("train.sortagrad=1", "config key train.sortagrad must be bool, got 1"),
    ("data.test=test", "config key data.test must be list\\[str\\], got 'test'"),
    ("optim.name=adamw", "config key optim.name = 'adamw' is not one of adam, sgd"),
    ("sparsity.method=prune", "sparsity.method 'prune' is not one of none, wp, bp, gl, glp"),
    ("optim.lr", "override 'optim.lr' must look like section.key=value"),
    ("optim=3", "config key optim must be a table"),
])
def test_bad_keys_and_types_are_one_clear_sentence(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        load_config(bad)


def test_parse_override_reads_toml_values_and_bare_words():
    assert parse_override("a.b=[4, 4]") == (["a", "b"], [4, 4])
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("model.preset=gru128") == (["model", "preset"], "gru128")


def test_resolved_config_round_trips_through_json(tmp_path):
    cfg = load_config(None, ["sparsity.method=bp", "sparsity.end=0.45", "model.hidden=96"])
    save_config(cfg, tmp_path / "config.json")
    import json
    again = config_from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("name", ["main_dense.toml", "main_bp.toml", "gru256_bp.toml", "gru2560_bp.toml",
                                  "rnn1760_dense.toml"])  # the speech configs (others belong to other areas)
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    if cfg.sparsity.method != "none":
        assert "output.*" in cfg.sparsity.exclude  # the paper never prunes the output layer


def test_the_command_line_reports_config_errors_in_one_sentence(capsys):
    from bsrnn.cli import main
    assert main(["train", "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bsrnn: error: config key optim.lrr is unknown") and "Traceback" not in err


def test_the_task_key_and_configs_written_before_it(tmp_path):
    from bsrnn.train import config
    assert load_config().task == "speech" and config_to_dict(load_config())["task"] == "speech"
    old = config_to_dict(load_config(None, ["optim.lr=1e-3"]))
    del old["task"]  # a config.json written before the key existed
    assert config_from_dict(old).task == "speech" and config_from_dict(old).optim.lr == 1e-3
    assert config.build_config is config._build  # public now; the old private name still works
    cfg = config.build_config(config.OptimConfig, {"lr": 0.5}, "optim")
    assert cfg.lr == 0.5 and cfg.name == "adam"
    with pytest.raises(ValueError, match="config key optim.lrr is unknown"):
        config.build_config(config.OptimConfig, {"lrr": 0.5}, "optim")


def test_construction_lives_in_build_and_keeps_its_old_import_names():
    import importlib

    from bsrnn.train import build, loop
    evaluate = importlib.import_module("bsrnn.train.evaluate")  # (bsrnn.train.evaluate is the function)
    for name in ("manifest_for", "open_dataset", "model_from_config"):
        assert getattr(evaluate, name) is getattr(build, name), name
    assert loop.feature_stats is build.feature_stats
    model = build.model_from_config(load_config(None, ["model.preset=gru32", "model.hidden=8"]).model)
    assert model.spec.hidden == 8
