"""Export a trained model for deployment without ltcls: ``pt2`` (torch.export), ``onnx`` (ONNX Runtime and
others) or the legacy ``torchscript``, with the json of what it expects beside it.

The exported module takes a float RGB tensor ``(N, 3, H, W)`` in [0, 1] at the run's eval size (any batch size
N), normalises it with the run's mean / std inside, and returns logits ``(N, C)`` (a dual head: its scores). It is
captured on CPU, written to a temporary file, loaded back from that file with the format's own loader (ONNX
Runtime for ONNX) and compared with the eager model on a batch of another size before it is renamed into place
(:func:`export_model`); where it may be written is :mod:`ltcls.export.outputs`.
"""

from ltcls.export.exporter import ExportError, ExportSpec, export_model
from ltcls.export.modules import DualHeadClassifier, LossScores, Normalized
from ltcls.export.outputs import ExportPaths, OutputRefused, is_export, meta_path, plan_output

__all__ = ["DualHeadClassifier", "ExportError", "ExportPaths", "ExportSpec", "LossScores", "Normalized",
           "OutputRefused", "export_model", "is_export", "meta_path", "plan_output"]
