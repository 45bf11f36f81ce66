"""``bsrnn bench gpu``: one line and exit status 2 without CUDA; with a GPU, the quick run checks
every CUDA method against scipy and writes its result file."""

import argparse
import json

import pytest
import torch

from bsrnn.bench import gpu


def args(tmp_path):
    return argparse.Namespace(out=str(tmp_path), quick=True, rounds=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real run is tested below")
def test_without_cuda_it_says_so_in_one_line(tmp_path, capsys):
    assert gpu.run(args(tmp_path)) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quick_gpu_run_checks_and_writes_rows(tmp_path):
    assert gpu.run(args(tmp_path)) == 0
    res = json.loads((tmp_path / "gpu_quick.json").read_text())
    kernels = {r["kernel"] for r in res["rows"]}
    assert {"bsr_cuda", "csr_cuda", "dense_torch_mm", "dense_torch_bf16"} <= kernels
    assert all(r["median_us"] > 0 for r in res["rows"])
