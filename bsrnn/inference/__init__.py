"""Block-sparse inference: export to a BSR file, kernels, and a sparse recurrent runtime.

Reads only exported files and ``bsrnn.sparsity.blocks`` (DESIGN.md import rule); the export step
may consult ``sparsity.targets`` to know which matrices were pruned.
"""

from .export import BsrMatrix, ExportedModel, export_model, load, save, to_bsr

__all__ = ["BsrMatrix", "ExportedModel", "export_model", "load", "save", "to_bsr"]
