"""The export formats (:data:`ltcls.registries.EXPORT_FORMATS`): how each captures a module with a dynamic batch
dimension, turns it into the bytes of one file, and loads that file back for the check against the eager model.

- ``pt2``: ``torch.export.export`` -> an ExportedProgram saved with ``torch.export.save``; consumers call
  ``torch.export.load(FILE).module()``.
- ``onnx``: ``torch.onnx.export`` with the dynamo exporter (torch.export underneath; onnxscript translates), one
  self-contained file (weights inside), input ``images``, output ``logits`` / ``scores``; checked with ONNX
  Runtime on CPU.
- ``torchscript`` (legacy): ``torch.jit.trace``. PyTorch deprecates ``torch.jit``; its FutureWarnings are
  replaced by one log line of ours, shown only when torchscript is asked for.

Every format is serialized to bytes in memory and written with a plain file write, so a full disk is an
``OSError`` naming the file (torch's own zip writer aborts the process in C++ on a write error).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ltcls.registries import EXPORT_FORMATS

logger = logging.getLogger(__name__)

#: A loaded export: images ``(N, 3, H, W)`` -> scores ``(N, C)``.
Runner = Callable[[torch.Tensor], torch.Tensor]
#: The name of the batch dimension in every format (ONNX shows it as the input's first dimension).
BATCH = "batch"
#: The largest batch a pt2 / ONNX export declares; an upper bound only, no memory is reserved.
MAX_BATCH = 1 << 16


class ExportFormat:
    """One way to save a module: ``capture`` (may fail for a model it cannot express), ``serialize`` to the bytes
    of one file, ``load`` that file back. ``tolerance``: the largest difference to the eager model accepted."""

    tolerance: ClassVar[float] = 1e-5

    def capture(self, module: nn.Module, example: torch.Tensor, output_name: str) -> object:
        raise NotImplementedError

    def serialize(self, artifact: object) -> bytes:
        raise NotImplementedError

    def load(self, path: Path) -> Runner:
        raise NotImplementedError


def _dynamic_batch() -> tuple[dict[int, torch.export.Dim], ...]:
    return ({0: torch.export.Dim(BATCH, min=1, max=MAX_BATCH)},)


@EXPORT_FORMATS.register("pt2")
class PT2Format(ExportFormat):
    """``torch.export``: an ExportedProgram (``.pt2``) with a dynamic batch dimension."""

    tolerance: ClassVar[float] = 1e-5

    def capture(self, module: nn.Module, example: torch.Tensor, output_name: str) -> object:
        return torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch())

    def serialize(self, artifact: object) -> bytes:
        buffer = io.BytesIO()
        torch.export.save(artifact, buffer)  # type: ignore[arg-type]
        return buffer.getvalue()

    def load(self, path: Path) -> Runner:
        with open(path, "rb") as f:  # a file object: the temporary file's name does not end in .pt2
            return torch.export.load(f).module()


@EXPORT_FORMATS.register("onnx")
class ONNXFormat(ExportFormat):
    """``torch.onnx.export`` (dynamo exporter): a self-contained ``.onnx`` file, input ``images`` with a dynamic
    ``batch`` dimension; checked with ONNX Runtime on CPU."""

    tolerance: ClassVar[float] = 1e-4

    def capture(self, module: nn.Module, example: torch.Tensor, output_name: str) -> object:
        # torch.export first, as for pt2: its failure is the same error (torch.onnx.export would retry a failed
        # non-strict capture in strict mode, which only takes longer), and the batch dimension is already dynamic
        program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch())
        # torch.onnx prints its steps ("[torch.onnx] Obtain model graph ...") on stdout, which is the command's
        with contextlib.redirect_stdout(io.StringIO()):
            return torch.onnx.export(program, (example,), None, input_names=["images"], output_names=[output_name],
                                     dynamo=True, external_data=False, verbose=False)

    def serialize(self, artifact: object) -> bytes:
        return artifact.model_proto.SerializeToString()  # type: ignore[attr-defined]

    def load(self, path: Path) -> Runner:
        import onnxruntime  # lazy: an optional dependency (the onnx extra), only for this format

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        return run


@contextlib.contextmanager
def _jit_quiet():
    """torch.jit's deprecation FutureWarnings and the tracer's warnings (e.g. a constant check in a head's forward,
    which the comparison with the eager model covers) off; the format's log line says it is legacy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


@EXPORT_FORMATS.register("torchscript")
class TorchScriptFormat(ExportFormat):
    """Legacy ``torch.jit.trace`` (timm's models and ltcls's heads trace; most do not script)."""

    tolerance: ClassVar[float] = 1e-5

    def capture(self, module: nn.Module, example: torch.Tensor, output_name: str) -> object:
        logger.warning("torchscript is a legacy format (PyTorch deprecates torch.jit); prefer --format pt2 or onnx")
        with _jit_quiet():
            return torch.jit.trace(module, example, check_trace=False)

    def serialize(self, artifact: object) -> bytes:
        buffer = io.BytesIO()
        with _jit_quiet():
            torch.jit.save(artifact, buffer)  # type: ignore[arg-type]
        return buffer.getvalue()

    def load(self, path: Path) -> Runner:
        with _jit_quiet():
            return torch.jit.load(str(path))


def get_format(name: str) -> ExportFormat:
    """The registered format ``name`` (``KeyError`` listing the formats otherwise)."""
    return EXPORT_FORMATS.get(name)()
