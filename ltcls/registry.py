"""A tiny registry: a config picks an implementation by name.

Names are *declared* in a catalogue (:mod:`ltcls.registries`) with the module that implements them, so
the registry knows every name (for ``--help``, ``--stage2`` choices, config errors) without importing
torch; :meth:`Registry.get` imports the module on first use, whose ``@REGISTRY.register(name)`` decorator
attaches the object. A declaration may carry metadata that callers read without an import (the task a
dataset belongs to, a stage-2 method's config preset).

Each registry knows which constructor arguments are *runtime facts* (class counts, feature dimension, ...)
that the builder passes itself; every other keyword argument of a registered constructor is a
hyper-parameter that a config section may set. The constructor signature is the schema
(:meth:`Registry.schema`): its annotations give the types and its defaults the default values, so the
config checker and the builder read the same source of truth.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_MISSING = inspect.Parameter.empty

#: ``{param: (type, default)}``: the config schema of one registered constructor.
Schema = dict[str, tuple[Any, Any]]


class Registry:
    """Maps names to constructors (classes or factory functions).

    ``declare(name, module, **meta)`` names an implementation without importing it; ``register`` (a
    decorator, in that module) attaches the object. ``register`` raises ``ValueError`` on a duplicate name;
    ``get`` raises ``KeyError`` listing the registered names (and the closest one) on an unknown name.
    ``common`` is a callable (or ``'module:attr'``) whose keyword arguments every entry accepts too (the
    transform keys of every dataset). ``section``: the config section whose keys are the entries' parameters
    (``'loss'``); a constructor's ``ValueError`` about a parameter is then re-raised naming the key
    (``loss.p``), see :meth:`build`.
    """

    def __init__(self, kind: str, runtime: Iterable[str] = (), common: str | Callable[..., Any] | None = None,
                 section: str | None = None) -> None:
        self.kind = kind
        self.runtime = frozenset(runtime)
        self.section = section
        self._common = common
        self._items: dict[str, Callable[..., Any]] = {}
        self._modules: dict[str, str] = {}
        self._meta: dict[str, dict[str, object]] = {}

    # ------------------------------------------------------------------------------ declaring
    def declare(self, name: str, module: str, **meta: Any) -> None:
        """Name an implementation living in ``module`` (imported on first :meth:`get`)."""
        if name in self._modules or name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already declared")
        self._modules[name] = module
        self._meta[name] = dict(meta)

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is already registered (by {self._items[key]!r})")
            declared = self._modules.get(key)
            if declared is not None and declared != obj.__module__:
                raise ValueError(f"{self.kind} '{key}' is declared in {declared}, not {obj.__module__}")
            self._items[key] = obj
            self._meta.setdefault(key, {})
            return obj

        return deco

    # -------------------------------------------------------------------------------- looking up
    def __contains__(self, name: object) -> bool:
        return name in self._modules or name in self._items

    def names(self) -> list[str]:
        return sorted(set(self._modules) | set(self._items))

    def meta(self, name: str) -> dict[str, object]:
        """The declaration's metadata (no import)."""
        self._check(name)
        return self._meta.get(name, {})

    def _check(self, name: str) -> None:
        if name not in self:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            plural = self.kind + ("es" if self.kind.endswith("s") else "s")
            raise KeyError(f"unknown {self.kind} '{name}'.{hint} Registered {plural}: {', '.join(self.names())}")

    def get(self, name: str) -> Callable[..., Any]:
        self._check(name)
        if name not in self._items:
            importlib.import_module(self._modules[name])
            if name not in self._items:
                raise ImportError(f"{self._modules[name]} does not register {self.kind} '{name}' as declared")
        return self._items[name]

    def common(self) -> Callable[..., Any] | None:
        if isinstance(self._common, str):
            module, attr = self._common.split(":")
            self._common = getattr(importlib.import_module(module), attr)
        return self._common

    # ----------------------------------------------------------------------------------- schema
    def hyperparams(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments of ``name`` a config may set (its signature minus runtime facts)."""
        return _keyword_params(self.get(name), self.runtime)

    def schema(self, name: str) -> Schema:
        """``{key: (type, default)}`` of a config section that picks ``name`` (``name`` itself included)."""
        out: Schema = {"name": (str, name)}
        common = self.common()
        if common is not None:
            keys = self.meta(name).get("common_keys")  # the common parameters this one uses (default: all)
            out.update({k: v for k, v in signature_schema(common).items() if keys is None or k in keys})
        out.update(signature_schema(self.get(name), skip=self.runtime))
        return out

    def build(self, name: str, params: Mapping[str, Any] | None = None, **runtime: Any) -> Any:
        """Construct ``name`` with the config's ``params`` and the runtime facts it accepts.

        Runtime facts the constructor does not take are dropped (a plain cross-entropy does not
        need class counts); an unknown hyper-parameter is an error naming it. With a ``section``, a
        ``ValueError`` of the constructor whose message names some of the given parameters is re-raised as
        ``SECTION.KEY=VALUE (SECTION 'NAME'): MESSAGE``, so the user sees which config key to change.
        """
        params = dict(params or {})
        params.pop("name", None)
        allowed = self.hyperparams(name)
        for key in params:
            if key in self.runtime:
                raise ValueError(f"{self.kind} '{name}': '{key}' is derived from the data/model and cannot be set")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise TypeError(
                    f"{self.kind} '{name}' has no parameter '{key}'.{hint} "
                    f"Parameters: {', '.join(allowed) or '(none)'}"
                )
        sig = inspect.signature(self.get(name)).parameters
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.values())
        hyper = dict(params)
        for key, value in runtime.items():
            if key in sig or accepts_any:
                params[key] = value
        try:
            return self.get(name)(**params)
        except ValueError as e:
            named = _named_keys(str(e), hyper) if self.section else []
            if not named:
                raise
            keys = ", ".join(f"{self.section}.{k}={hyper[k]!r}" for k in named)
            raise ValueError(f"{keys} ({self.section} '{name}'): {e}") from e


def _named_keys(message: str, params: Mapping[str, Any]) -> list[str]:
    """The keys of ``params`` that ``message`` mentions as words (``p`` in "p must be >= 0"), unless it already
    names a dotted config key."""
    return [k for k in params if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message)
            and not re.search(rf"\w\.{re.escape(k)}\b", message)]


def _keyword_params(obj: Callable[..., Any], skip: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    skip = set(skip)
    out = {}
    for p in inspect.signature(obj).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self" or p.name in skip:
            continue
        out[p.name] = p
    return out


def _hints(obj: Callable[..., Any]) -> dict[str, object]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        return dict(getattr(target, "__annotations__", {}))


def signature_schema(obj: Callable[..., Any], skip: Iterable[str] = ()) -> Schema:
    """``{param: (type, default)}`` of a callable's keyword hyper-parameters (``None`` for a required one)."""
    hints = _hints(obj)
    return {name: (hints.get(name, Any), None if p.default is _MISSING else p.default)
            for name, p in _keyword_params(obj, skip).items()}


def params_of(section: Mapping[str, Any]) -> dict[str, object]:
    """A named config section's hyper-parameters: everything but its ``name``."""
    return {k: v for k, v in section.items() if k != "name"}
