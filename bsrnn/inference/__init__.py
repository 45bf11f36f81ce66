"""Block-sparse inference: export to a BSR file, kernels, and a sparse recurrent runtime.

    exp = export_model(model, block=(4, 4)); save(exp, "m.safetensors")   # BSR file
    exp = load("m.safetensors")                                            # exact round trip
    y = matmul(exp.sparse["rnn.weight_hh_l0"], x)                          # Y = W·X, cpu kernel
    sparsify_(model, exp)                                                  # run the RNNs sparse

Reads only exported files and ``bsrnn.sparsity.blocks`` (docs/architecture.md §3); the export step
may consult ``sparsity.targets`` to know which matrices were pruned.
"""

from .export import BsrMatrix, ExportedModel, export_model, load, save, to_bsr
from .kernels import matmul
from .rnn import SparseRecurrent, sparsify_

__all__ = ["BsrMatrix", "ExportedModel", "SparseRecurrent", "export_model", "load", "matmul", "save",
           "sparsify_", "to_bsr"]
