"""Every bad input gets one clear sentence naming the file, field or tensor and what would be valid.

This file holds the classes not already tested elsewhere; the table lists every class and where
its test lives (benchmarks/reliability.md records the messages):

====  ================================================  ===========================================================
 #    bad input                                         test
====  ================================================  ===========================================================
 1    unknown config key / wrong type / bad choice      tests/train/test_config.py::test_bad_keys_and_types_are_one_clear_sentence
 2    missing / invalid TOML file                       tests/train/test_config.py::test_bad_files
 3    out-of-range config numbers (batch 0, lr < 0 ...) here: test_config_numbers_out_of_range
 4    block shape that does not tile a layer            tests/sparsity/test_methods.py::test_bad_arguments_are_clear_errors; here on DeepSpeech2
 5    sparsity target outside [0, 1)                    tests/sparsity/test_report_config.py (1.2); here: -0.1 and 1.0 from the config
 6    layer pattern that matches nothing                tests/sparsity/test_methods.py (exclude); here: include on DeepSpeech2
 7    invalid pruning schedule                          tests/sparsity/test_schedules.py::test_invalid_schedules_are_clear_errors
 8    missing / empty / corrupt / header-only audio     tests/data/test_data_audio.py::test_missing_file, test_empty_file, test_corrupt_file, ...
 9    too-short audio, non-finite samples               tests/data/test_data_audio.py::test_too_short, test_non_finite_samples
 10   stereo / other sample rate (accepted)             tests/data/test_data_audio.py::test_stereo_is_downmixed, test_other_rates_are_resampled
 11   transcript with unknown characters / empty text   tests/data/test_data_text.py::test_encode_unknown_characters_..., test_encode_empty_text
 12   unusable rows in a split (skipped and counted)    tests/data/test_data_batching.py::test_bad_rows_are_skipped_with_a_counted_warning
 13   a split with no usable utterance at all           here: test_a_split_without_usable_utterances_names_its_manifest
 14   manifest: bad JSON, missing fields, bad types     tests/data/test_data_manifest.py::test_bad_json_..., test_missing_fields_..., test_ill_typed_fields
 15   manifest with duplicate ids                       tests/data/test_data_manifest.py::test_duplicate_ids_point_at_first_use
 16   NaN / inf loss: skipped, counted, limit           tests/train/test_training.py::test_a_nan_batch_is_skipped_..., test_too_many_nan_batches_...
 17   NaN on one rank only (DDP)                        tests/train/test_distributed.py::test_sync_batchnorm_... (agree_on_batch)
 18   full disk while writing a checkpoint              here: test_full_disk_..._leaves_the_previous_checkpoint (+ end to end)
 19   crash / SIGKILL mid-write                         tests/train/test_checkpoint.py::test_a_crash_mid_write_...; tests/reliability/test_kill.py
 20   truncated / empty / non-zip checkpoint            tests/train/test_checkpoint.py::test_truncated_...; here: the CLI's one line
 21   tampered checkpoint (a flipped byte)              tests/train/test_checkpoint.py::test_a_flipped_byte_in_tensor_data_is_detected
 22   pickled code in a checkpoint                      tests/train/test_checkpoint.py::test_code_in_...; here: proven not to run
 23   pickled code in a feature cache                   here: test_pickled_code_in_a_feature_cache_never_runs
 24   pickled code in an exported model                 tests/inference/test_export.py::test_load_never_unpickles
 25   exported model whose header and arrays disagree   tests/inference/test_export.py::test_header_array_disagreement_is_a_clear_error
 26   resuming under a different config                 tests/train/test_training.py::test_resuming_under_a_different_config_is_refused
 27   train.run_dir that is a file                      here: test_a_run_dir_that_is_a_file_is_one_line
 28   torchrun environment that is not a job            here: test_a_bad_torchrun_environment_is_one_sentence
 29   batch size that leaves a rank without data        tests/train/test_distributed.py::test_a_batch_size_that_starves_a_rank_...
 30   ranks whose masks diverge                         tests/train/test_distributed.py::test_sync_batchnorm_... (RankDivergence)
 31   CLI: bad input exits 2 with one line              tests/train/test_config.py::test_the_command_line_...; here for eval and train
 32   transcribe: missing/empty/corrupt/short audio     tests/inference/test_transcribe.py::test_bad_files_get_one_line_each_and_the_next_file_goes_on
 33   transcribe: v1 / weights-only export, bi stream   tests/inference/test_speech.py::test_version_1_...; test_transcribe.py::test_bad_models_...
====  ================================================  ===========================================================
"""

import errno
import json
import os
import shutil

import pytest
import torch

from bsrnn.cli import main
from bsrnn.data.batching import _load_cache, compute_stats
from bsrnn.models import build_model
from bsrnn.sparsity import build_method
from bsrnn.train import checkpoint, load_config
from bsrnn.train.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from bsrnn.train.distributed import setup


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "config key train.batch_size must be >= 1, got 0"),
    ("train.epochs=0", "config key train.epochs must be >= 1, got 0"),
    ("optim.lr=-1", "config key optim.lr must be a number > 0, got -1"),
    ("optim.lr=nan", "config key optim.lr must be a number > 0, got nan"),
    ("optim.momentum=1.0", r"config key optim.momentum must be in \[0, 1\), got 1.0"),
    ("schedule.decay_factor=0", r"config key schedule.decay_factor must be in \(0, 1\], got 0"),
    ("train.max_bad_batches=-1", "config key train.max_bad_batches must be >= 0, got -1"),
    ("log.every=0", "config key log.every must be >= 1, got 0"),
])
def test_config_numbers_out_of_range(override, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        load_config(None, [override])


@pytest.mark.parametrize("target", ["-0.1", "1.0"])
def test_sparsity_target_outside_the_unit_interval(target):
    with pytest.raises(ValueError, match=rf"sparsity.target must be in \[0, 1\), got {target}"):
        load_config(None, ["sparsity.method=bp", f"sparsity.target={target}"])


def tiny_model():
    return build_model("gru32", hidden=24, conv_channels=4)


def test_a_block_that_does_not_tile_a_gru_layer_names_the_layer_and_valid_sizes():
    cfg = load_config(None, ["sparsity.method=bp", "sparsity.block=[5,5]"])
    with pytest.raises(ValueError, match=r"rnn.weight_ih_l0: block 5×5 does not tile each of its 3 gates of 24×80; "
                                         r"choose a block whose height divides 24 and whose width divides 80"):
        build_method(tiny_model(), cfg.sparsity, steps_per_epoch=10, total_steps=100)


def test_an_include_pattern_that_matches_nothing_lists_real_parameters():
    cfg = load_config(None, ["sparsity.method=bp", "sparsity.include=['decoder.*']"])
    with pytest.raises(ValueError, match=r"parameter pattern 'decoder.\*' matches no parameter of the model; "
                                         r"parameters are e.g. conv.convs.0.weight"):
        build_method(tiny_model(), cfg.sparsity, steps_per_epoch=10, total_steps=100)


# -- data ----------------------------------------------------------------------------------------

def test_a_split_without_usable_utterances_names_its_manifest(tmp_path):
    manifest = tmp_path / "train.jsonl"
    rows = [{"id": f"u{i}", "path": f"gone{i}.wav", "text": "hello", "duration": 1.0} for i in range(3)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(RuntimeWarning, match="skipped 3 of 3"):
        with pytest.raises(ValueError, match=r"train.jsonl has no usable utterances to compute feature statistics "
                                             r"from; 3 skipped, first: .*gone0.wav"):
            compute_stats(manifest)


class MarkerPayload:
    """Unpickling this creates a file: the proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_feature_cache_never_runs(tmp_path):
    marker = tmp_path / "ran"
    cache = tmp_path / "train.0123456789abcdef.pt"
    torch.save({"features": MarkerPayload(marker)}, cache)
    with pytest.warns(RuntimeWarning, match="feature cache unreadable .UnpicklingError: it holds objects other than tensors and plain values, refused unread.*recomputing it"):
        assert _load_cache(cache) is None  # refused, so the features are recomputed
    assert not marker.exists()


# -- checkpoints ---------------------------------------------------------------------------------

def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT, "model": MarkerPayload(marker)}, evil)
    with pytest.raises(ValueError, match="holds objects other than tensors and plain values, refused unread"):
        load_checkpoint(evil)
    assert not marker.exists()


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are used, as on a full disk."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_after(monkeypatch, writes_that_succeed: int):
    calls = {"n": 0}

    def fake_open(path, mode="r"):
        calls["n"] += 1
        return FullDisk(open(path, mode), 1 << 40 if calls["n"] <= writes_that_succeed else 100)
    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


def test_full_disk_while_writing_a_checkpoint_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    before = path.read_bytes()
    fill_disk_after(monkeypatch, 0)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint({"model": {"w": torch.zeros(1000)}}, path)
    assert str(info.value) == (f"could not write checkpoint {path} (No space left on device); the previous checkpoint "
                               "there is intact; free space or fix permissions and resume")
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today"]
needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("flite") is None,
                               reason="needs espeak-ng or flite to synthesize the test utterances")


@needs_tts
def test_full_disk_stops_training_with_one_line_and_the_last_checkpoint_loads(tmp_path, monkeypatch, capsys):
    from bsrnn.data.synth import synthesize
    corpus = tmp_path / "corpus"
    synthesize(corpus, n_utts=8, dev_size=2, test_size=2, unseen_voice_test_size=0, prompts=PROMPTS, workers=1,
               progress=False, seed=3)
    fill_disk_after(monkeypatch, 2)  # checkpoints after steps 1 and 2 are written, the third fails
    code = main(["train", "--set", f"data.corpus={corpus}", f"train.run_dir={tmp_path / 'run'}", "data.test=['test']",
                 "model.preset=gru32", "model.hidden=24", "model.conv_channels=4", "train.threads=1",
                 "train.batch_size=1", "train.epochs=1", "train.checkpoint_every=1", "log.progress=false",
                 "log.tensorboard=false"])
    err = capsys.readouterr().err
    assert code == 1
    line = one_line("\n".join(x for x in err.splitlines() if x.startswith("bsrnn:")))
    assert line.startswith("bsrnn: error: could not write checkpoint ") and "the previous checkpoint there is intact" in line
    assert load_checkpoint(tmp_path / "run" / "last.pt")["position"]["step"] == 2
    assert not list((tmp_path / "run").glob(".*.tmp*"))


def test_the_cli_reports_a_non_checkpoint_in_one_line(tmp_path, capsys):
    junk = tmp_path / "best.pt"
    junk.write_text("not a checkpoint\n")
    assert main(["eval", str(junk)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"bsrnn: error: checkpoint {junk} is truncated, corrupt or not a bsrnn checkpoint (not a PyTorch zip "
        "archive); delete it to restart, or resume from another checkpoint (best.pt).")


# -- runs ----------------------------------------------------------------------------------------

def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.write_text("")
    assert main(["train", "--set", f"train.run_dir={run_dir}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"bsrnn: error: train.run_dir {run_dir} is a file, not a directory; name a new or existing directory")


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "x"}, "environment variable RANK='x' must be an integer (torchrun sets it)"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "environment variable RANK=2 must lie in [0, WORLD_SIZE=2)"),
])
def test_a_bad_torchrun_environment_is_one_sentence(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as info:
        setup()
    assert str(info.value) == message
