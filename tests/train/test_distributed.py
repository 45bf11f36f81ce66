"""Data-parallel training on 2 CPU processes (gloo) equals one process on the same global batches.

The end-to-end tests run the real ``torchrun -m bsrnn train`` command on a tiny TTS corpus with
GLP (group-lasso penalty + block masks) and SpecAugment on, so the penalty, the pruning decisions,
the RNG and the synchronised BatchNorm all matter. Measured on a loaded 2-core machine: weights
differ by at most ~5e-6 from the single-process run, masks and CER are identical.
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from bsrnn.data.synth import synthesize
from bsrnn.train import load_config, train
from bsrnn.train import distributed
from bsrnn.train.checkpoint import load_checkpoint

PROMPTS = ["the cat sat on the mat", "open the door please", "green apples are sour", "my dog likes to run",
           "rain falls on the hill", "read the book aloud", "call me in the morning", "the sky is blue today",
           "time flies like an arrow", "we need more light here"]
TOLERANCE = 1e-4  # float32 summation order differs between 1 and 2 ranks; measured max ~5e-6

needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None and shutil.which("flite") is None,
                               reason="needs espeak-ng or flite to synthesize the test utterances")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- pure helpers -----------------------------------------------------------------------------------

def test_shards_cover_the_global_batch_in_order():
    for n in range(2, 9):
        parts = [distributed.shard(list(range(n)), distributed.Dist(r, 3 if n >= 3 else 2)) for r in range(3 if n >= 3 else 2)]
        assert sum(parts, []) == list(range(n)) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_batch_size_that_starves_a_rank_is_refused_with_a_clear_sentence():
    distributed.check_shardable(8, 6, 2)  # batches of 6 and 2: fine
    with pytest.raises(ValueError, match=r"train.batch_size = 7 on 8 training utterances leaves a global batch of 1 "
                                         r"for 2 ranks; .*remainder of 0 or >= 2"):
        distributed.check_shardable(8, 7, 2)
    with pytest.raises(ValueError, match="train.batch_size = 1 .* global batch of 1 for 2 ranks"):
        distributed.check_shardable(8, 1, 2)


def test_one_process_loss_is_exactly_f_ctc_loss_and_shares_sum_to_it():
    torch.manual_seed(0)
    log_probs = torch.randn(12, 4, 6).log_softmax(-1)
    targets, tl, ol = torch.randint(1, 6, (10,)), torch.tensor([3, 2, 4, 1]), torch.tensor([12, 10, 12, 8])
    one = distributed.ctc_loss(log_probs, targets, ol, tl, 4, distributed.Dist())
    assert torch.equal(one, F.ctc_loss(log_probs, targets, ol, tl, zero_infinity=True))
    # Two ranks' shares (each × world / B) average to the global mean: (a + b) / 2 == mean.
    a = distributed.ctc_loss(log_probs[:, :2], targets[:5], ol[:2], tl[:2], 4, distributed.Dist(0, 2))
    b = distributed.ctc_loss(log_probs[:, 2:], targets[5:], ol[2:], tl[2:], 4, distributed.Dist(1, 2))
    assert torch.allclose((a + b) / 2, one, atol=1e-6)


def test_checksum_sees_a_single_flipped_mask_bit():
    m = {"w": torch.ones(5, 7, dtype=torch.bool)}
    flipped = {"w": m["w"].clone()}
    flipped["w"][4, 6] = False
    assert distributed.checksum(m) != distributed.checksum(flipped)
    assert distributed.checksum(m) == distributed.checksum({"w": m["w"].clone()})
    assert distributed.checksum({"w": torch.zeros(3)}) != distributed.checksum({"w": torch.zeros(3).double()})


# -- 2 gloo processes ---------------------------------------------------------------------------------

def _sync_bn_worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 3, 5, 6) * 2 + 1  # the global batch; every rank builds the same one
        x[1, :, 3:] = 0.0  # padded frames count in the statistics, as in one process
        g = torch.randn(4, 3, 5, 6)
        bn = distributed.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
        assert isinstance(bn, distributed.SyncBatchNorm2d)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        xs = x[2 * rank:2 * rank + 2].clone().requires_grad_(True)
        # Each rank's loss is its share × world, as the training loop weights it; DDP would
        # then average the parameter gradients.
        (bn(xs) * g[2 * rank:2 * rank + 2]).sum().mul(world).backward()
        grads = torch.cat([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(grads)
        xg = [torch.zeros_like(xs) for _ in range(world)]
        dist.all_gather(xg, xs.grad)
        if rank == 0:
            # Summed over ranks the losses are world × the one-process loss: DDP's average (÷ world)
            # of the parameter gradients, and each input gradient ÷ world, are the one-process ones.
            out.update(x_grad=torch.cat(xg) / world, p_grad=grads / world,
                       running=torch.cat([bn.running_mean, bn.running_var]))
        # A NaN on one rank makes every rank skip the batch; finite losses give the global mean.
        ctx = distributed.Dist(rank, world)
        out[f"agree{rank}"] = (distributed.agree_on_batch(torch.tensor(2.0 + 2 * rank), 1.0, ctx),
                               distributed.agree_on_batch(torch.tensor(1.0), float("nan") if rank else 1.0, ctx))
        # A rank that disagrees is named, with the step.
        mask = {"w": torch.ones(4, 4, dtype=torch.bool)}
        distributed.verify_same("sparsity masks", mask, 7, distributed.Dist(rank, world))
        if rank == 1:
            mask["w"][0, 0] = False
        try:
            distributed.verify_same("sparsity masks", mask, 8, distributed.Dist(rank, world))
        except distributed.RankDivergence as e:
            out[f"error{rank}"] = str(e)
        dist.barrier()  # leave together: gloo aborts a rank whose peer tears the group down under it
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_on_two_ranks_equals_batchnorm_on_the_whole_batch():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_sync_bn_worker, args=(2, _free_port(), out), nprocs=2)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    x[1, :, 3:] = 0.0
    g = torch.randn(4, 3, 5, 6)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x.requires_grad_(True)
    (bn(x) * g).sum().backward()
    assert torch.allclose(out["x_grad"], x.grad, atol=1e-5)
    assert torch.allclose(out["p_grad"], torch.cat([bn.weight.grad, bn.bias.grad]), atol=1e-4)
    assert torch.allclose(out["running"], torch.cat([bn.running_mean, bn.running_var]), atol=1e-6)
    for rank in (0, 1):
        (mean, ok), (nan, vetoed) = out[f"agree{rank}"]
        assert (mean, ok) == (3.0, True) and math.isnan(nan) and not vetoed  # mean of 2 and 4; a NaN vetoes all
        assert out[f"error{rank}"].startswith("sparsity masks differ between ranks at step 8: rank(s) 1 disagree "
                                              "with rank 0")


# -- the real command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, n_utts=12, dev_size=2, test_size=2, unseen_voice_test_size=0, prompts=PROMPTS,
               workers=1, progress=False, seed=3)
    return out  # train holds 8 utterances: global batches of 6 and 2


def _settings(corpus, run_dir, *extra):
    return [f"data.corpus={corpus}", f"train.run_dir={run_dir}", "data.test=['test']", "model.preset=gru32",
            "model.hidden=24", "model.conv_channels=4", "train.threads=1", "train.batch_size=6", "train.epochs=2",
            "schedule.warmup_steps=2", "log.progress=false", "log.tensorboard=false", "log.every=1",
            "sparsity.method=glp", "sparsity.lambda_g=0.01", "sparsity.block=[4,4]", "sparsity.exclude=['output.*']",
            "sparsity.freq=1", "sparsity.start=1", "sparsity.ramp=2", "sparsity.end=3", "sparsity.target=0.5",
            "features.spec_augment=true",
            # fp32: N ranks equal one process to float tolerance; bf16 rounding of differently
            # reduced BN statistics can flip a block at the pruning threshold
            "train.precision=fp32", *extra]


def torchrun(nproc: int, settings: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}",
           "-m", "bsrnn", "train", "--set", *settings]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def max_weight_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def assert_same_run(one, two):
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    masks_a, masks_b = a["sparsity"]["masks"], b["sparsity"]["masks"]
    assert masks_a.keys() == masks_b.keys() and all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    assert any(not bool(m.all()) for m in masks_a.values())  # pruning happened, so the masks were compared
    diff = max_weight_difference(a["model"], b["model"])
    assert diff < TOLERANCE, diff
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # SpecAugment drew the same numbers
    drop = {"seconds"}
    assert {k: v for k, v in a["position"].items() if k not in drop} == \
           {k: v for k, v in b["position"].items() if k not in drop}
    ra, rb = json.loads((one / "report.json").read_text()), json.loads((two / "report.json").read_text())
    assert {s: r["cer"] for s, r in ra["splits"].items()} == {s: r["cer"] for s, r in rb["splits"].items()}
    return diff


@needs_tts
def test_two_ranks_train_the_model_one_process_trains(corpus, tmp_path):
    train(load_config(None, _settings(corpus, tmp_path / "one")))
    done = torchrun(2, _settings(corpus, tmp_path / "two"))
    assert done.stdout.count("parameters ") == 1 and "Warning" not in done.stderr  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "two").glob("*.pt")) == ["best.pt", "last.pt"]
    assert_same_run(tmp_path / "one", tmp_path / "two")


@needs_tts
@pytest.mark.slow
def test_a_run_resumes_under_another_world_size(corpus, tmp_path):
    # Stop one process mid-epoch, resume on 2 ranks: the checkpoint's position is global.
    train(load_config(None, _settings(corpus, tmp_path / "one")))
    train(load_config(None, _settings(corpus, tmp_path / "switch", "train.max_steps=3")))
    torchrun(2, _settings(corpus, tmp_path / "switch"))
    assert_same_run(tmp_path / "one", tmp_path / "switch")
