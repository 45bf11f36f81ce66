"""Every registered kernel against scipy.sparse.bsr_matrix in float64, and every bad input one
clear error: out= buffers, hand-built matrices, blocks a kernel cannot run."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bsrnn.bench import kernels as bench
from bsrnn.inference import BsrMatrix, to_bsr
from bsrnn.inference import kernels as K
from bsrnn.inference.kernels import cpu

BLOCKS = [(1, 1), (4, 4), (8, 8), (16, 16), (12, 2), (2, 12)]
BATCHES = [1, 3, 8, 17]


def random_mat(block, nbr=7, nbc=9, keep=0.35, seed=0):
    """Odd numbers of block rows and columns, some block rows empty."""
    rng = np.random.default_rng(seed)
    r, c = block
    mask = rng.random((nbr, nbc)) < keep
    mask[nbr // 2] = False  # one block row without blocks
    w = rng.standard_normal((nbr * r, nbc * c)).astype(np.float32) * np.kron(mask, np.ones(block, np.float32))
    return to_bsr(torch.from_numpy(w), block)


def scipy_ref(mat: BsrMatrix, x: np.ndarray) -> np.ndarray:
    """The product from the BSR arrays themselves, by scipy, in float64."""
    s = sp.bsr_matrix((mat.values.astype(np.float64), mat.indices, mat.indptr), shape=mat.matrix_shape)
    return s @ x.astype(np.float64)


def assert_close(y, ref):
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def numba_compiled(name, block):
    """Cases that run numba-compiled code: the numba kernel, and cpu on blocks without a C++ case."""
    return name == "numba" or (name == "cpu" and (block not in cpu.SPECIALISED or cpu.compiled() is None))


# numba compiles one kernel per (block, batch tile) in seconds: the default suite runs its cases at
# batch 1 on four blocks, and at batch 3 on 1×1 and 4×4 (compiled for test_kernels.py anyway);
# everything else with -m slow
GRID = []
EXACT = [n for n in K.available() if K.KERNELS[n].exact]  # dense_torch_bf16: tests/inference/test_low_precision.py
for _name in EXACT:
    for _block in BLOCKS:
        for _B in BATCHES:
            slow = numba_compiled(_name, _block) and (_block in ((8, 8), (16, 16)) or _B > 3
                                                      or (_B == 3 and _block[0] != _block[1]))
            GRID.append(pytest.param(_name, _block, _B, marks=[pytest.mark.slow] if slow else [],
                                     id=f"{_name}-{_block[0]}x{_block[1]}-B{_B}"))


@pytest.mark.parametrize("name, block, B", GRID)
def test_every_kernel_matches_scipy_bsr(name, block, B):
    cpu.set_num_threads(2)
    mat = random_mat(block, seed=block[0] * 31 + block[1])
    x = np.random.default_rng(B).standard_normal((mat.matrix_shape[1], B)).astype(np.float32)
    kern = K.get(name)
    if kern.unsupported(mat):
        with pytest.raises(ValueError, match="square blocks"):
            kern(mat, x)
        assert name in ("bsr_torch", "bsr_mkl") and block[0] != block[1]
        return
    assert_close(kern(mat, x), scipy_ref(mat, x))
    if B == 1:
        assert_close(kern(mat, x[:, 0]), scipy_ref(mat, x[:, 0]))


def test_bsr_torch_refuses_non_square_blocks_in_one_sentence():
    mat = random_mat((12, 2))
    with pytest.raises(ValueError, match=r"^bsr_torch: .*only square blocks, not 12×2; use the cpu or csr_torch"):
        K.get("bsr_torch")(mat, np.ones(mat.matrix_shape[1], np.float32))
    assert "bsr_torch" not in mat.cache
    assert K.get("bsr_torch").unsupported(random_mat((4, 4))) is None


# ----------------------------------------------------------------------------------- out= buffers
@pytest.mark.parametrize("name", EXACT)
def test_out_buffer_is_filled_and_returned(name):
    mat = random_mat((4, 4), seed=1)
    m, k = mat.matrix_shape
    x = np.random.default_rng(0).standard_normal((k, 3)).astype(np.float32)
    ref = scipy_ref(mat, x)
    out = np.full((m, 3), np.nan, np.float32)
    assert K.get(name)(mat, x, out) is out
    assert_close(out, ref)
    out1 = np.full(m, np.nan, np.float32)  # 1-D x, 1-D out
    assert K.get(name)(mat, x[:, 0], out1) is out1
    assert_close(out1, ref[:, 0])
    tout = torch.full((m, 3), float("nan"))  # a CPU torch tensor is written in place
    assert K.get(name)(mat, torch.from_numpy(x), tout) is tout
    assert_close(tout.numpy(), ref)


@pytest.mark.parametrize("name", K.available())
def test_bad_out_buffers_are_one_clear_error(name):
    mat = random_mat((4, 4), seed=2)
    m, k = mat.matrix_shape
    x = np.ones((k, 3), np.float32)
    big = np.zeros((m, 6), np.float32)
    bad = {"has dtype float64": np.zeros((m, 3)),
           "is not a writeable C-contiguous array": big[:, ::2],
           r"has shape \(28, 4\)": np.zeros((m, 4), np.float32),
           r"has shape \(84,\)": np.zeros(m * 3, np.float32),
           "is a list": [0.0] * (m * 3)}
    for problem, out in bad.items():
        with pytest.raises(ValueError, match=rf"^{name}: out {problem}; it must be a C-contiguous float32 array"):
            K.get(name)(mat, x, out)
    assert not big.any()  # nothing was written into the strided buffer


def test_out_that_aliases_x_is_refused():
    mat = random_mat((4, 4), nbr=5, nbc=5, keep=0.8, seed=3)  # square: y and x have one shape
    buf = np.ones((20, 2), np.float32)
    with pytest.raises(ValueError, match="cpu: out overlaps x"):
        K.get("cpu")(mat, buf, buf)
    assert (buf == 1).all()


# --------------------------------------------------------------------------- hand-built matrices
def hand_built(**change):
    good = random_mat((4, 4), seed=4)
    arrays = {"indptr": good.indptr, "indices": good.indices, "values": good.values} | change
    return BsrMatrix(good.shape, good.block, arrays["indptr"], arrays["indices"], arrays["values"], name="W")


GOOD = random_mat((4, 4), seed=4)
BAD_MATRICES = {
    "indices has dtype int64, must be int32": hand_built(indices=GOOD.indices.astype(np.int64)),
    "indptr has dtype int64, must be int32": hand_built(indptr=GOOD.indptr.astype(np.int64)),
    "values has dtype float64, must be float32": hand_built(values=GOOD.values.astype(np.float64)),
    "values is not C-contiguous": hand_built(values=np.asfortranarray(GOOD.values)),
    "indices is not C-contiguous": hand_built(indices=np.repeat(GOOD.indices, 2)[::2]),
    "indices is a list, not a numpy array": hand_built(indices=GOOD.indices.tolist()),
    r"values have shape \(\d+, 2, 8\)": hand_built(values=np.ascontiguousarray(GOOD.values.reshape(-1, 2, 8))),
    "indptr must rise from 0 to nnzb": hand_built(indptr=GOOD.indptr[::-1].copy()),
    r"block-column indices must lie in \[0, 9\)": hand_built(indices=GOOD.indices + np.int32(9)),
    "a block is stored twice in one block row": hand_built(indices=np.zeros_like(GOOD.indices)),
}


@pytest.mark.parametrize("name", K.available())
def test_hand_built_matrices_are_refused_before_any_pointer_is_taken(name):
    x = np.ones((GOOD.matrix_shape[1], 2), np.float32)
    for problem, mat in BAD_MATRICES.items():
        with pytest.raises(ValueError, match=rf"^sparse matrix W: {problem}"):
            K.get(name)(mat, x)
        assert mat.cache == {}  # nothing was prepared from the bad arrays
    with pytest.raises(ValueError, match="expected a BsrMatrix"):
        K.get(name)(torch.zeros(4, 4), x)


def test_converted_hand_built_matrix_is_accepted():
    mat = BAD_MATRICES["indices has dtype int64, must be int32"]
    fixed = BsrMatrix(mat.shape, mat.block, mat.indptr, np.ascontiguousarray(mat.indices, np.int32), mat.values)
    x = np.random.default_rng(0).standard_normal(fixed.matrix_shape[1]).astype(np.float32)
    assert_close(K.matmul(fixed, x), scipy_ref(fixed, x))


# ------------------------------------------------------------------ the benchmark's code path, tiny
def test_benchmark_cell_runs_and_skips_bsr_torch_on_non_square_blocks():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 48)).astype(np.float32)
    w[np.abs(w) < 1.0] = 0
    # block key 12 holds a 12×2 matrix: torch's BSR cannot run it, the cell must go on without it
    mats = {1: bench.random_bsr(48, 48, 1, 0.5, rng), 4: bench.random_bsr(48, 48, 4, 0.5, rng), 12: to_bsr(w, (12, 2))}
    logged = []
    rows = bench.run_cell(48, 48, 0.5, 1, mats, rng.standard_normal((48, 48), dtype=np.float32), rounds=1,
                          target=1e-4, rng=rng, log=logged.append)
    kernels = {(r["kernel"], r["block"]) for r in rows}
    assert {("csr_torch", 1), ("bsr_torch", 4), ("bsr_scipy", 12), ("cpu", 4), ("cpu", 12), ("numba_ref", 12)} <= kernels
    assert ("bsr_torch", 12) not in kernels and ("bsr_mkl", 12) not in kernels
    assert {r["dtype"] for r in rows if r["kernel"] == "cpu"} == {"float32", "bf16", "int8"}
    assert any("skipping bsr_torch for 12" in m for m in logged)
    assert all(r["median_us"] > 0 for r in rows) and logged
