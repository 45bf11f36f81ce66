"""Block-sparse inference: export to a BSR file, kernels, and a sparse recurrent runtime.

    exp = export_model(model, block=(4, 4)); save(exp, "m.safetensors")   # BSR file
    exp = load("m.safetensors")                                            # exact round trip
    y = matmul(exp.sparse["rnn.weight_hh_l0"], x)                          # Y = W·X, cpu kernel
    sparsify_(model, exp)                                                  # run the RNNs sparse
    Transcriber.from_file("m.safetensors").transcribe("a.wav").text        # a whole speech model

Reads only exported files and ``bsrnn.sparsity.blocks`` (docs/architecture.md §3); the export step
may consult ``sparsity.targets`` to know which matrices were pruned, and the transcriber uses
``bsrnn.data``'s audio reader, log-mel front end and alphabet (docs/deployment.md).
"""

from .export import BsrMatrix, ExportedModel, export_model, load, save, to_bsr
from .kernels import matmul
from .rnn import SparseRecurrent, sparsify_
from .speech import SpeechModel
from .transcribe import Transcriber, Transcript

__all__ = ["BsrMatrix", "ExportedModel", "SparseRecurrent", "SpeechModel", "Transcriber", "Transcript", "export_model",
           "load", "matmul", "save", "sparsify_", "to_bsr"]
