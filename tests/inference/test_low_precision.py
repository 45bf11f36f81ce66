"""bf16 and int8 block values (docs/kernels.md §2): quantisation error bounds, the cpu kernel
against float64 scipy for every block size, odd shapes and batches, the portable (non-AVX-512)
build forced, any OpenMP team size, export files, the recurrent runtime."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bsrnn.inference import export, to_bsr
from bsrnn.inference import kernels as K
from bsrnn.inference.export import quantize
from bsrnn.inference.kernels import cpu

BLOCKS = [(1, 1), (4, 4), (8, 8), (16, 16), (32, 32), (2, 4)]  # (2, 4): no C++ case, numba fallback


def random_mat(block, seed, nbr=5, nbc=3, keep=0.5):
    rng = np.random.default_rng(seed)
    r, c = block
    mask = rng.random((nbr, nbc)) < keep
    mask[0, 0] = True
    w = rng.standard_normal((nbr * r, nbc * c)).astype(np.float32) * np.kron(mask, np.ones((r, c), np.float32))
    w[: r] *= 20  # block rows of very different magnitudes: per-row scales must follow them
    return to_bsr(w, block), w


def f64(mat):
    m, k = mat.matrix_shape
    return sp.bsr_matrix((mat.values_fp32().astype(np.float64), mat.indices, mat.indptr), shape=(m, k))


def test_quantisation_error_is_what_each_dtype_implies():
    mat, w = random_mat((4, 4), 0, nbr=9, nbc=7)
    b = quantize(mat, "bf16")
    assert b.values.dtype == np.uint16 and b.dtype == "bf16" and b.scales is None
    wb = b.to_dense().numpy()
    assert np.all(np.abs(wb - w) <= np.abs(w) * 2.0**-8)  # round to nearest: half an ulp of 8 bits
    q = quantize(mat, "int8")
    assert q.values.dtype == np.int8 and q.dtype == "int8" and q.scales.shape == (9,)
    assert np.abs(q.values).max() == 127
    wq = q.to_dense().numpy()
    row_scale = np.repeat(q.scales, 4)[:, None]
    assert np.all(np.abs(wq - w) <= row_scale / 2 * (1 + 1e-6))
    assert np.array_equal(wq[w == 0], w[w == 0])  # zeros stay zeros, the block pattern is the same
    assert q.indices is mat.indices and q.indptr is mat.indptr
    assert quantize(q, "fp32").dtype == "float32"
    with pytest.raises(ValueError, match="^unknown value dtype 'fp16'; choose fp32, bf16 or int8$"):
        quantize(mat, "fp16")


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_cpu_kernel_matches_float64_scipy(dtype, block):
    mat, w = random_mat(block, seed=block[0] * 7 + block[1], nbr=7, nbc=5)
    q = quantize(mat, dtype)
    ref, exact = f64(q), f64(mat)
    absw = np.abs(w).astype(np.float64)
    fallback = block not in cpu.SPECIALISED  # numba compiles per batch tile: fewer batches there
    for nt in (1, 2):
        cpu.set_num_threads(nt)
        for B in ((1, 3) if fallback else (1, 3, 8, 17, 64)):
            x = np.random.default_rng(B).standard_normal((w.shape[1], B)).astype(np.float32)
            y = K.get("cpu")(q, x)
            r = ref @ x.astype(np.float64)
            # the kernel multiplies the quantised values exactly (fp32 accumulation only)
            np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5 * float(np.abs(r).max()))
            # and is as close to the fp32 product as the dtype allows
            err = np.abs(y - exact @ x.astype(np.float64))
            if dtype == "bf16":
                bound = 2.0**-8 * (absw @ np.abs(x)) + 1e-4
            else:
                bound = np.repeat(q.scales, block[0])[:, None] / 2 * ((w != 0) @ np.abs(x)) + 1e-4
            assert np.all(err <= bound)
    x1 = np.random.default_rng(0).standard_normal(w.shape[1]).astype(np.float32)  # 1-D x
    np.testing.assert_allclose(K.get("cpu")(q, x1), ref @ x1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["numba", "reference", "csr_torch", "bsr_scipy", "dense_numpy"])
def test_kernels_without_low_precision_paths_multiply_the_same_values(name):
    mat, w = random_mat((4, 4), 3)
    q = quantize(mat, "int8")
    x = np.random.default_rng(1).standard_normal((w.shape[1], 3)).astype(np.float32)
    np.testing.assert_allclose(K.get(name)(q, x), f64(q) @ x, rtol=1e-5, atol=1e-4)


def test_dense_bf16_peer_is_within_bf16_tolerance():
    mat, w = random_mat((4, 4), 4)
    x = np.random.default_rng(2).standard_normal((w.shape[1], 5)).astype(np.float32)
    y = K.get("dense_torch_bf16")(mat, x)
    err = np.abs(y - w.astype(np.float64) @ x)
    assert np.all(err <= 2.0**-7 * (np.abs(w) @ np.abs(x)) + 2.0**-7 * np.abs(w @ x) + 1e-3)


def test_bad_low_precision_matrices_are_one_clear_error():
    mat, _ = random_mat((4, 4), 5)
    q = quantize(mat, "int8")
    no_scales = export.BsrMatrix(q.shape, q.block, q.indptr, q.indices, q.values, name="W")
    with pytest.raises(ValueError, match=r"^sparse matrix W: int8 values need scales, .* shape \(5,\)"):
        K.get("cpu")(no_scales, np.ones(q.matrix_shape[1], np.float32))
    stray = export.BsrMatrix(mat.shape, mat.block, mat.indptr, mat.indices, mat.values, name="W", scales=q.scales)
    with pytest.raises(ValueError, match="^sparse matrix W: scales belong to int8 values only, not float32$"):
        stray.validate()
    f16 = export.BsrMatrix(mat.shape, mat.block, mat.indptr, mat.indices, mat.values.astype(np.float16), name="W")
    with pytest.raises(ValueError, match="^sparse matrix W: values has dtype float16, must be float32, uint16"):
        f16.validate()


PORTABLE = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp
    from bsrnn.inference import to_bsr, kernels as K
    from bsrnn.inference.export import quantize
    from bsrnn.inference.kernels import cpu
    lib = cpu.compiled()
    assert lib is not None, "no library"
    print("flags", " ".join(cpu.cxx_flags()))
    rng = np.random.default_rng(0)
    bad = []
    for b in (1, 4, 8, 16, 32):
        w = rng.standard_normal((96, 64)).astype(np.float32)
        w[rng.random(w.shape) < 0.5] = 0
        for dt in ("fp32", "bf16", "int8"):
            q = quantize(to_bsr(w, b), dt)
            ref = sp.bsr_matrix((q.values_fp32().astype(np.float64), q.indices, q.indptr), shape=(96, 64))
            for nt in (1, 2, 3):
                cpu.set_num_threads(nt)
                for B in (1, 3, 8, 17):
                    x = rng.standard_normal((64, B)).astype(np.float32)
                    r = ref @ x.astype(np.float64)
                    err = float(np.abs(K.get("cpu")(q, x) - r).max() / np.abs(r).max())
                    if err > 1e-5:
                        bad.append(f"block {b} {dt} threads {nt} B {B}: error {err:.1e}")
    print("\\n".join(bad) or "ok")
""")


@pytest.mark.skipif(cpu.compiler() is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("env", [{"BSRNN_CPU_MARCH": "x86-64"}, {"OMP_THREAD_LIMIT": "1"}],
                         ids=["portable-build", "OMP_THREAD_LIMIT=1"])
def test_every_value_type_in_the_portable_build_and_under_one_omp_thread(env):
    # x86-64: SSE2 only, no AVX-512 paths compiled; OMP_THREAD_LIMIT=1: a team of one for nt = 2, 3
    res = subprocess.run([sys.executable, "-c", PORTABLE], env=os.environ | env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "ok", res.stdout
    assert ("-march=x86-64" in lines[0]) == ("BSRNN_CPU_MARCH" in env)


def test_int8_export_is_30x_smaller_than_dense_and_round_trips(tmp_path):
    from bsrnn.bench.kernels import random_bsr

    rng = np.random.default_rng(0)
    q = quantize(random_bsr(1760, 1760, 4, 0.90, rng), "int8")
    assert 4 * 1760 * 1760 / q.nbytes >= 30  # values 1 B, int32 indices, one scale per block row
    exp = export.ExportedModel({"w": q, "b": quantize(random_bsr(64, 32, 4, 0.5, rng), "bf16")}, {"bias": torch.zeros(3)})
    p = export.save(exp, tmp_path / "m.safetensors")
    back = export.load(p)
    for n in ("w", "b"):
        assert back.sparse[n].dtype == exp.sparse[n].dtype
        assert np.array_equal(back.sparse[n].values, exp.sparse[n].values)
    assert np.array_equal(back.sparse["w"].scales, q.scales)
    assert back.size_report()[0]["dtype"] == "int8"


def test_a_header_that_disagrees_with_the_values_is_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    mat, _ = random_mat((4, 4), 6)
    p = export.save(export.ExportedModel({"w": quantize(mat, "int8")}, {}), tmp_path / "m.safetensors")
    from safetensors import safe_open
    with safe_open(str(p), framework="pt") as f:
        head = json.loads(f.metadata()["bsrnn"])
    head["sparse"]["w"]["dtype"] = "bf16"
    save_file(load_file(str(p)), str(p), metadata={"bsrnn": json.dumps(head)})
    with pytest.raises(ValueError, match="sparse matrix w: header says bf16 values but the array holds int8$"):
        export.load(p)


@pytest.mark.parametrize("dtype, tol", [("bf16", 2e-2), ("int8", 3e-2)])
def test_sparse_gru_runs_on_low_precision_values(dtype, tol):
    from bsrnn.inference.rnn import SparseRecurrent

    torch.manual_seed(0)
    gru = torch.nn.GRU(24, 32, num_layers=2)
    with torch.no_grad():
        for p in gru.parameters():
            if p.ndim == 2:
                p.mul_((torch.rand(p.shape[0] // 4, p.shape[1] // 4) < 0.3).float().repeat_interleave(4, 0)
                       .repeat_interleave(4, 1))
    x = torch.randn(9, 3, 24)
    with torch.no_grad():
        ref, _ = gru(x)
    sgru = SparseRecurrent.from_module(gru, (4, 4), dtype=dtype)
    assert {d["w_hh"].dtype for layer in sgru.weights for d in layer} == {dtype}
    out, _ = sgru(x)
    assert float((out - ref).abs().max()) < tol
