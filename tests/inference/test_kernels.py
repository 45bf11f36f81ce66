"""Every kernel against the slow reference: random layouts, odd shapes and batches, empty and
full matrices, every block size (docs/kernels.md §3)."""

import numpy as np
import pytest
import torch

from bsrnn.inference import to_bsr
from bsrnn.inference import kernels as K
from bsrnn.inference.kernels import cpu

FAST = [n for n in K.available() if n != "reference" and K.KERNELS[n].exact]


def random_mat(rows, cols, block, keep, seed):
    rng = np.random.default_rng(seed)
    r, c = block
    mask = rng.random((rows // r, cols // c)) < keep
    w = rng.standard_normal((rows, cols)).astype(np.float32) * np.kron(mask, np.ones((r, c), np.float32))
    return to_bsr(torch.from_numpy(w), block), w


def check(name, mat, w, B, seed=0):
    x = np.random.default_rng(seed).standard_normal((w.shape[1], B)).astype(np.float32)
    ref = K.get("reference")(mat, x)
    np.testing.assert_allclose(ref, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    y = K.get(name)(mat, x)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("block", [1, 4, 8, 16, 32])
@pytest.mark.parametrize("B", [1, 2, 3, 7, 16, 17, 33, 64, 65])
def test_cpu_matches_reference(block, B):
    # odd numbers of block rows/cols; 2 threads so the nnz-balanced split is exercised
    mat, w = random_mat(block * 7, block * 5, (block, block), 0.35, seed=block * 100 + B)
    cpu.set_num_threads(2)
    check("cpu", mat, w, B)


# numba compiles one kernel per (block, batch tile) in seconds: its 8×8 cases run with -m slow
CASES = [pytest.param(n, b, marks=pytest.mark.slow) if (n == "numba" and b == 8) else (n, b)
         for n in FAST for b in (1, 4, 8)]


@pytest.mark.parametrize("name, block", CASES)
@pytest.mark.parametrize("B", [1, 3])
def test_every_kernel_matches_reference(name, block, B):
    mat, w = random_mat(block * 9, block * 6, (block, block), 0.3, seed=block + B)
    check(name, mat, w, B)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("keep", [0.0, 1.0], ids=["empty", "full"])
def test_empty_and_full_matrices(name, keep):
    mat, w = random_mat(24, 16, (4, 4), keep, seed=3)
    assert mat.nnzb == (0 if keep == 0.0 else 24)
    for B in ((1, 3) if name == "numba" else (1, 5, 16)):
        check(name, mat, w, B)


def test_rows_without_blocks_and_one_thread_per_row():
    # all blocks in one block row: the other threads get nothing to do
    w = np.zeros((32, 16), np.float32)
    w[8:12] = np.random.default_rng(0).standard_normal((4, 16))
    mat = to_bsr(torch.from_numpy(w), 4)
    for nt in (1, 2, 3, 8):
        cpu.set_num_threads(nt)
        check("cpu", mat, w, 1)
        check("cpu", mat, w, 20)
    cpu.set_num_threads(2)


def test_non_specialised_block_falls_back_exactly():
    mat, w = random_mat(12, 20, (2, 2), 0.5, seed=1)  # 2×2 has no C++ specialisation
    for B in (1, 3):
        check("cpu", mat, w, B)
    assert "fallback" in mat.cache["cpu"]


def test_vector_and_torch_inputs_and_out_buffer():
    mat, w = random_mat(64, 48, (8, 8), 0.4, seed=2)
    x = np.random.default_rng(0).standard_normal(48).astype(np.float32)
    y = K.matmul(mat, x)
    assert y.shape == (64,)
    np.testing.assert_allclose(y, w @ x, atol=1e-4)
    yt = K.matmul(mat, torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and torch.allclose(yt, torch.from_numpy(w @ x), atol=1e-4)
    out = np.empty((64, 1), np.float32)
    assert K.matmul(mat, x.reshape(48, 1), out=out) is out
    np.testing.assert_allclose(out[:, 0], w @ x, atol=1e-4)


def test_strided_input_is_accepted():
    mat, w = random_mat(32, 32, (4, 4), 0.5, seed=4)
    xbig = np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32)
    x = xbig[:, ::3]  # non-contiguous columns
    np.testing.assert_allclose(K.matmul(mat, x), w @ x, atol=1e-4)


def test_layout_is_prepared_once():
    mat, _ = random_mat(32, 32, (4, 4), 0.5, seed=5)
    K.matmul(mat, np.ones(32, np.float32))
    state = mat.cache["cpu"]
    K.matmul(mat, np.ones((32, 3), np.float32))
    assert mat.cache["cpu"] is state


def test_bad_shapes_and_names_are_clear_errors():
    mat, _ = random_mat(32, 16, (4, 4), 0.5, seed=6)
    with pytest.raises(ValueError, match=r"\(16,\) or \(16, B\)"):
        K.matmul(mat, np.ones(17, np.float32))
    with pytest.raises(ValueError, match="unknown kernel"):
        K.get("nope")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_kernel_matches_reference():
    mat, w = random_mat(64, 32, (16, 16), 0.4, seed=7)
    check("bsr_cuda", mat, w, 5)
    xg = torch.randn(32, 3, device="cuda")
    y = K.get("bsr_cuda")(mat, xg)
    assert y.is_cuda and torch.allclose(y.cpu(), torch.from_numpy(w) @ xg.cpu(), atol=1e-4)


def test_retile_is_exact():
    mat, w = random_mat(96, 64, (32, 32), 0.5, seed=8)
    t = cpu.retile(mat, 16)
    t.validate()
    assert t.block == (16, 16) and t.nnzb == 4 * mat.nnzb
    assert np.array_equal(t.to_dense().numpy(), w)


def test_registry_names_are_re_exported_and_children_import_only_base():
    import ast
    from pathlib import Path

    from bsrnn.inference.kernels import base

    assert (K.Kernel, K.KERNELS, K.register, K.get, K.available, K.matmul) == (
        base.Kernel, base.KERNELS, base.register, base.get, base.available, base.matmul)
    # no kernel module imports from the package itself (its __init__ would be half-initialised)
    for path in Path(base.__file__).parent.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module, f"{path.name} imports from the kernels package itself"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.level]
                assert not inner, f"{path.name}:{node.name} imports a package module inside a function"


def test_numba_batch_tile_must_be_one_it_has():
    assert cpu.Numba(16).bb == 16
    with pytest.raises(ValueError, match="bb=3 is not one of 1, 2, 4, 8, 16"):
        cpu.Numba(3)


@pytest.mark.slow
@pytest.mark.parametrize("bb", sorted(cpu.DOTS))
def test_every_numba_batch_tile_matches_reference(bb):
    mat, w = random_mat(24, 40, (4, 4), 0.4, seed=bb)
    x = np.random.default_rng(bb).standard_normal((40, 2 * bb + 1)).astype(np.float32)  # tiles, then 1 by 1
    np.testing.assert_allclose(cpu.Numba(bb)(mat, x), w.astype(np.float64) @ x, rtol=1e-4, atol=1e-4)
