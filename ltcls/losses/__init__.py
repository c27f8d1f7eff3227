"""Losses, one small module each (registered by name; the names are declared in :mod:`ltcls.registries`).

This package imports nothing heavy: import :mod:`ltcls.losses.base` for :class:`LTLoss` and
:func:`build_loss`."""
