"""A tiny registry: a config picks an implementation by name.

Each registry knows which constructor arguments are *runtime facts* (class counts, feature
dimension, ...) that the builder passes itself; every other keyword argument of a registered
constructor is a hyper-parameter that a config section may set. The constructor signature is
the schema: its annotations give the types and its defaults the default values, so the config
checker (``ltcls.config``) and the builder read the same source of truth.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_MISSING = inspect.Parameter.empty


class Registry:
    """Maps names to constructors (classes or factory functions).

    ``register`` raises ``ValueError`` on a duplicate name; ``get`` raises ``KeyError`` listing
    the registered names (and the closest one) on an unknown name.
    """

    def __init__(self, kind: str, runtime: Iterable[str] = ()) -> None:
        self.kind = kind
        self.runtime = frozenset(runtime)
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is already registered (by {self._items[key]!r})")
            self._items[key] = obj
            return obj

        return deco

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {', '.join(self.names())}"
            ) from None

    def hyperparams(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments of ``name`` a config may set (its signature minus runtime facts)."""
        sig = inspect.signature(self.get(name))
        out = {}
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self" or p.name in self.runtime:
                continue
            out[p.name] = p
        return out

    def build(self, name: str, params: Mapping[str, Any] | None = None, **runtime: Any) -> Any:
        """Construct ``name`` with the config's ``params`` and the runtime facts it accepts.

        Runtime facts the constructor does not take are dropped (a plain cross-entropy does not
        need class counts); an unknown hyper-parameter is an error naming it.
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
        for key, value in runtime.items():
            if key in sig or accepts_any:
                params[key] = value
        return self.get(name)(**params)


def defaults_of(params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """Default values of hyper-parameters (``None`` standing for a required one is not allowed)."""
    return {k: (None if p.default is _MISSING else p.default) for k, p in params.items()}
