"""The one list of plug-ins: packages that declare datasets, tasks and stage-2 methods of their own into
:mod:`ltcls.registries` when imported (torch-free). The command-line entry points load them first; a script
that uses a plug-in's names without the command line calls :func:`load_plugins` (or imports the package)."""

from __future__ import annotations

import importlib

PLUGINS: tuple[str, ...] = ("ltcls.detection",)


def load_plugins() -> None:
    """Import every plug-in package (idempotent)."""
    for name in PLUGINS:
        importlib.import_module(name)
