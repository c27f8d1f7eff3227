"""One export: a model with its normalisation in front, captured in a format, written to a temporary file,
loaded back from it and compared with the eager model, the json written beside it, then renamed into place.

A model a format cannot capture is an :class:`ExportError` of one line naming the format and the part that
failed (the deepest submodule of the model in the failure's traceback, its file, line and code) and the
reason; a write that fails (a full disk, a permission) is one naming the file. Neither leaves a partial file,
and a previous export under the same name keeps its content (:func:`ltcls.io.atomic_write`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import linecache
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import torch
from torch import nn

from ltcls.errors import UserError
from ltcls.export.formats import ExportFormat, get_format
from ltcls.export.modules import Normalized
from ltcls.export.outputs import EXPORTED_BY, ExportPaths, plan_output
from ltcls.io import atomic_write, atomic_write_text
from ltcls.models.peft import adapter_names, merge_adapters
from ltcls.registries import EXPORT_FORMATS

logger = logging.getLogger(__name__)

#: The batch sizes of the example an export is captured with and of the batch it is checked on (another size,
#: so a model whose output depends on the batch size fails the check).
EXAMPLE_BATCH, CHECK_BATCH = 2, 3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TORCH_MODULE_PY = os.path.join("torch", "nn", "modules", "module.py")


class ExportError(UserError):
    """An export failed after it started (the format cannot express the model, the check failed, the file could
    not be written); the message is one line, exit status 1, and no partial file is left."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=1)


@dataclass(frozen=True)
class ExportSpec:
    """What the exported module expects and returns, written to its json: images ``(N, 3, H, W)`` in [0, 1] at
    ``input_size``, normalised with ``mean`` / ``std`` inside; ``outputs`` (``'logits'`` or ``'scores'``)
    ``(N, len(class_names))``."""

    mean: Sequence[float]
    std: Sequence[float]
    input_size: int | Sequence[int]
    class_names: Sequence[str]
    source_run: str | os.PathLike
    outputs: str = "logits"
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        s = self.input_size
        size = (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be an int or (height, width) of positive ints, got {s!r}")
        return size  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ naming a failure
def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _where(name: str, cls: str, filename: str, line: int, code: str) -> str:
    shown = os.path.relpath(filename) if not os.path.relpath(filename).startswith("..") else filename
    return f"{name or 'the model'} ({cls}) at {shown}:{line} {code.strip()!r}"


def _frame_part(err: BaseException, root: nn.Module) -> str | None:
    """The deepest ``forward`` of a submodule of ``root`` in the tracebacks of ``err``'s chain: a failure while
    the exporter ran the model's Python code (torch.export, the tracer)."""
    names = {id(m): name for name, m in root.named_modules()}
    found = None
    for e in _chain(err):
        for tb in _frames(e.__traceback__):
            owner, code = tb.tb_frame.f_locals.get("self"), tb.tb_frame.f_code
            if id(owner) in names and not code.co_filename.endswith(_TORCH_MODULE_PY):
                found = (names[id(owner)], type(owner).__name__, code.co_filename, tb.tb_lineno)
    if found is None:
        return None
    name, cls, filename, line = found
    return _where(name, cls, filename, line, linecache.getline(filename, line))


def _node_part(err: BaseException) -> str | None:
    """The graph node being translated in the tracebacks of ``err``'s chain (a local ``node``: an op ONNX has no
    function for), described by the module and source line the node records."""
    node = None
    for e in _chain(err):
        for tb in _frames(e.__traceback__):
            candidate = tb.tb_frame.f_locals.get("node")
            node = candidate if isinstance(candidate, torch.fx.Node) else node
    if node is None:
        return None
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    name, cls = stack[-1] if stack else ("", "")
    cls = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    sources = re.findall(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', node.meta.get("stack_trace") or "")
    op = f", op {node.target}"
    if not sources:
        return f"{name or 'the model'} ({cls}){op}"
    filename, line, code = sources[-1]
    return _where(name, cls, filename, int(line), code) + op


def failing_part(err: BaseException, root: nn.Module) -> str | None:
    """Where in ``root`` an export failed: ``"model.classifier (NCMClassifier) at ltcls/models/decoupled.py:135
    'if not bool(self.fitted):'"`` (a graph op adds ``, op aten.x.default``), ``None`` when nothing says."""
    return _frame_part(err, root) or _node_part(err)


def failure_reason(err: BaseException) -> str:
    """The first line of the innermost error in ``err``'s chain that says something (class name and message)."""
    for e in reversed(list(_chain(err))):
        lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
        if lines:
            text = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
            return f"{type(e).__name__}: {text}"
    return type(err).__name__


def _capture(fmt_name: str, fmt: ExportFormat, module: nn.Module, example: torch.Tensor, output_name: str
             ) -> object:
    try:
        return fmt.capture(module, example, output_name)
    except Exception as err:
        part = failing_part(err, module)
        where = f" in {part}" if part else ""
        raise ExportError(f"cannot export the model to {fmt_name}: it fails{where}: {failure_reason(err)}") from err


# ------------------------------------------------------------------------------------------ checking
def allowed_difference(expected: torch.Tensor, tolerance: float) -> float:
    """``tolerance`` times the outputs' scale: their largest finite magnitude where that exceeds 1 (a randomly
    initialised CIFAR ResNet-32 gives logits of several hundred, where float32's resolution alone is ~3e-5)."""
    finite = expected[torch.isfinite(expected)]
    return tolerance * max(1.0, float(finite.abs().max()) if finite.numel() else 1.0)


def compare(got: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> float:
    """The largest difference of ``got`` to ``expected`` (equal infinities and NaNs match: NCM's classes without
    training samples are -inf); :class:`ExportError` when the shapes differ or it exceeds
    :func:`allowed_difference`."""
    if got.shape != expected.shape:
        raise ExportError(f"{what} gives shape {tuple(got.shape)} instead of {tuple(expected.shape)} on a batch of "
                          f"{expected.shape[0]} (the model's forward depends on the batch size)")
    allowed = allowed_difference(expected, tolerance)
    close = torch.isclose(got, expected, rtol=0.0, atol=allowed, equal_nan=True)
    diff = (got - expected).abs()[~close]
    if diff.numel():
        raise ExportError(f"{what} differs from the model by up to {diff.max():.3g} on a batch of {expected.shape[0]} "
                          f"(expected at most {allowed:.3g}): the model's forward depends on the batch size or on "
                          "state the export cannot capture, or the format computes it differently")
    finite = torch.isfinite(got) & torch.isfinite(expected)
    return float((got - expected)[finite].abs().max()) if bool(finite.any()) else 0.0


def _meta(paths: ExportPaths, fmt_name: str, spec: ExportSpec, max_diff: float, allowed: float
          ) -> dict[str, object]:
    height, width = spec.size
    return {
        "exported_by": EXPORTED_BY,
        "format": fmt_name,
        "file": paths.module.name,
        "input": "float RGB tensor (N, 3, H, W) in [0, 1]; normalisation is done inside; N is dynamic",
        "input_name": "images",
        "output": f"{spec.outputs} (N, num_classes)",
        "output_name": spec.outputs,
        "input_size": [height, width],
        "mean": [float(m) for m in spec.mean],
        "std": [float(s) for s in spec.std],
        "num_classes": len(spec.class_names),
        "class_names": [str(c) for c in spec.class_names],
        "source_run": str(spec.source_run),
        "torch_version": torch.__version__,
        "checked": {"batch": CHECK_BATCH, "max_abs_diff": max_diff, "allowed": allowed},
        "extra": dict(spec.extra),
    }


# ------------------------------------------------------------------------------------------ writing
class _MetaNotWritten(Exception):
    """Raised (without a chained OSError, so the module's writer does not report it as its own) when the json
    could not be written; :func:`_write_checked` keeps the json's error."""


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_checked(paths: ExportPaths, fmt_name: str, fmt: ExportFormat, data: bytes, check: torch.Tensor,
                   eager: torch.Tensor, spec: ExportSpec) -> float:
    """Write the module through a temporary file, load it back and compare before the rename; the json is written
    (atomically) after the check and before the module's rename. Returns the largest difference measured."""
    result: dict[str, object] = {}

    def write(tmp: Path) -> None:
        _write_bytes(tmp, data)
        got = _run_back(fmt_name, fmt, tmp, check, paths.module)
        max_diff = compare(got, eager, fmt.tolerance, f"the {fmt_name} file {paths.module}")
        result["max_diff"] = max_diff
        allowed = allowed_difference(eager, fmt.tolerance)
        text = json.dumps(_meta(paths, fmt_name, spec, max_diff, allowed), indent=2) + "\n"
        try:
            atomic_write_text(paths.meta, text)
        except OSError as err:
            result["meta_error"] = err
        if "meta_error" in result:
            raise _MetaNotWritten()

    try:
        atomic_write(paths.module, write)
    except _MetaNotWritten:
        raise ExportError(_write_failure(paths.meta, result["meta_error"])) from None  # type: ignore[arg-type]
    except OSError as err:
        raise ExportError(_write_failure(paths.module, err)) from err
    return float(result["max_diff"])  # type: ignore[arg-type]


def _run_back(fmt_name: str, fmt: ExportFormat, tmp: Path, check: torch.Tensor, module: Path) -> torch.Tensor:
    """The written file loaded back with the format's loader and run on ``check``; :class:`ExportError` if it does
    not load or run."""
    try:
        with torch.no_grad():
            return fmt.load(tmp)(check)
    except Exception as err:
        raise ExportError(f"the {fmt_name} file {module} does not load and run back (so it was not kept): "
                          f"{failure_reason(err)}") from err


def _write_failure(path: Path, err: OSError) -> str:
    message = str(err)
    if str(path) in message:  # the shared writer's "no space left on device while writing PATH (...)"
        return message
    return (f"cannot write {path}: {err.strerror or message} (nothing was replaced: the previous {path.name}, if "
            "any, is kept)")


def export_model(model: nn.Module, spec: ExportSpec, fmt: str = "pt2", out: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None) -> ExportPaths:
    """Export ``model`` (normalised images -> ``(N, C)``), with ``spec``'s normalisation in front, in format ``fmt``
    to ``out`` (default ``run_dir/model<suffix>``) and its json beside it (``FILE.json``); returns both paths.

    Refused before any work (:class:`ltcls.export.outputs.OutputRefused`, a ``ValueError``): an output that is
    a run's file or a file no export created (:func:`ltcls.export.outputs.plan_output`), a format whose packages
    are missing, class names that do not fit the model. After that, failures are :class:`ExportError`: the format
    cannot express a part of the model, the written file differs from the eager model on a batch of another size
    (more than the format's tolerance), or the file cannot be written; none leaves a partial file or touches a
    previous export.
    """
    fmt_impl, suffix = _format(fmt)
    paths = plan_output(out, suffix, run_dir)
    height, width = spec.size
    wrapped = Normalized(copy.deepcopy(model).cpu().float(), spec.mean, spec.std).eval()
    adapters = adapter_names(wrapped.model)
    if adapters:
        spec = dataclasses.replace(spec, extra={**spec.extra, "merged_adapters": list(adapters)})
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(EXAMPLE_BATCH, 3, height, width, generator=generator)
    check = torch.rand(CHECK_BATCH, 3, height, width, generator=generator)
    with torch.no_grad():
        eager = wrapped(check)  # the model as trained: the check after writing covers merging the adapters too
        if eager.ndim != 2 or eager.shape[1] != len(spec.class_names):
            raise ValueError(f"the model returns shape {tuple(eager.shape)} but {len(spec.class_names)} class names "
                             f"were given (expected (N, {len(spec.class_names)}))")
        wrapped.model = merge_adapters(wrapped.model)  # LoRA & co. folded into plain layers: no peft at load time
    artifact = _capture(fmt, fmt_impl, wrapped, example, spec.outputs)
    try:
        data = fmt_impl.serialize(artifact)
    except Exception as err:  # e.g. an ONNX model over protobuf's 2 GB
        raise ExportError(f"cannot serialize the model as {fmt}: {failure_reason(err)}") from err
    paths.module.parent.mkdir(parents=True, exist_ok=True)
    max_diff = _write_checked(paths, fmt, fmt_impl, data, check, eager, spec)
    replaced = ", replacing the earlier export" if paths.replaces else ""
    logger.info("exported %s (%s, %d classes, input %dx%d, %s%s; max difference to the model %.2g) and %s",
                paths.module, fmt, len(spec.class_names), height, width, spec.outputs, replaced, max_diff,
                paths.meta.name)
    return paths


def _format(name: str) -> tuple[ExportFormat, str]:
    """The format ``name`` and its file suffix; a ``ValueError`` naming what to install when it needs packages
    that are missing."""
    meta = EXPORT_FORMATS.meta(name)  # KeyError listing the formats
    missing = [m for m in meta.get("requires", ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--format {name} needs the packages {', '.join(missing)}: pip install 'ltcls[onnx]'")
    return get_format(name), str(meta["suffix"])
