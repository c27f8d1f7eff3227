"""Where an export may be written (torch-free): the module file, its json beside it, and what is refused.

Rules:

- The json beside ``FILE`` is ``FILE.json`` (the whole name with ``.json`` appended: ``model.pt2`` ->
  ``model.pt2.json``), so the module and its json are never the same file, whatever ``--out`` is, and exports
  of one run in several formats (``model.pt2``, ``model.onnx``) each keep their own json.
- A run's own files are never written: an output (module or json) naming one of a run's files
  (:func:`ltcls.rundir.refuse_run_files`), the run directory itself, a file in another run's directory, or any
  existing file that an export did not create is refused.
- An export created a file when the json beside it is an export's json naming that file
  (:func:`is_export`); such a file given as ``--out`` is replaced atomically. A default output name
  (``RUN_DIR/model<suffix>``) never replaces an existing file: the refusal says to pass it as ``--out``.

:func:`plan_output` applies them before any work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ltcls.rundir import RunDir, RunDirError, refuse_run_files

#: What an export's json says under ``exported_by``: the mark that the module beside it is an export.
EXPORTED_BY = "ltcls-export"


class OutputRefused(ValueError):
    """The output path names a file an export must not write (a run's file, a file it did not create)."""


@dataclass(frozen=True)
class ExportPaths:
    """Where one export goes: the module file and the json beside it."""

    module: Path
    meta: Path
    #: Whether an earlier export at ``module`` is replaced.
    replaces: bool


def meta_path(module: str | os.PathLike) -> Path:
    """The json beside an exported module: ``FILE.json`` (``.json`` appended to the whole name)."""
    module = Path(module)
    return module.with_name(module.name + ".json")


def is_export(module: str | os.PathLike) -> bool:
    """Whether ``module``'s json (:func:`meta_path`) is an export's json naming ``module``: what export wrote."""
    module = Path(module)
    try:
        meta = json.loads(meta_path(module).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("exported_by") == EXPORTED_BY and meta.get("file") == module.name


def _check_not_run_file(path: Path, what: str) -> None:
    try:
        refuse_run_files(path, what)
    except RunDirError as e:
        raise OutputRefused(str(e)) from None


def _check_not_another_run(path: Path, run_dir: Path | None, what: str) -> None:
    """A command never writes into another run's directory (a folder holding a run's config or checkpoint)."""
    folder = path.parent
    if run_dir is not None and folder.resolve() == run_dir.resolve():
        return
    other = RunDir(folder)
    if other.config_path.exists() or other.has_checkpoint():
        raise OutputRefused(f"{what} '{path}' lies in another run's directory ('{folder}' holds a run); an export "
                            "never writes into a run it was not made from: choose another --out")


def _writable_folder(path: Path) -> None:
    """The nearest existing folder above ``path`` must be a writable folder (``path``'s folder is created)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputRefused(f"cannot write '{path}': '{folder}' is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputRefused(f"cannot write '{path}': folder '{folder}' is not writable (permission denied)")


def plan_output(out: str | os.PathLike | None, suffix: str, run_dir: str | os.PathLike | None = None
                ) -> ExportPaths:
    """The module and json paths of an export to ``out`` (``None``: ``RUN_DIR/model<suffix>``), after the
    rules of the module docstring; :class:`OutputRefused` (one line naming the path) otherwise."""
    run = Path(run_dir) if run_dir is not None else None
    if out is None and run is None:
        raise ValueError("an export needs an output file or the run directory for its default name")
    module = Path(out) if out is not None else run / f"model{suffix}"  # type: ignore[operator]
    meta = meta_path(module)
    what = "--out" if out is not None else "the default output"
    _check_not_run_file(module, what)
    _check_not_run_file(meta, f"the json beside {module.name}:")
    _check_not_another_run(module, run, what)
    if module.is_dir() or meta.is_dir():
        raise OutputRefused(f"{what} '{module}' is a folder (or its json '{meta}' is); give a file name")
    ours = is_export(module)
    if module.exists() and not ours:
        raise OutputRefused(f"{what} '{module}' exists and was not written by ltcls-export (no {meta.name} beside "
                            "it naming it); choose another --out, or remove the file yourself")
    if meta.exists() and not ours:
        raise OutputRefused(f"'{meta}' (the json an export writes beside {module.name}) exists and is not "
                            f"ltcls-export's json for {module.name}; choose another --out")
    if module.exists() and out is None:
        raise OutputRefused(f"'{module}' exists (an earlier export); a default output name never replaces a file: "
                            f"pass --out {module} to replace it, or --out NEW_FILE")
    _writable_folder(module)
    return ExportPaths(module=module, meta=meta, replaces=module.exists())
