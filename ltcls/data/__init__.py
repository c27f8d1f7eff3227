"""Data layer: datasets (:mod:`ltcls.data.datasets`), transforms, samplers, and the split tools
(:mod:`ltcls.data.tools`). Builders are in :mod:`ltcls.data.build`; the registries in :mod:`ltcls.registries`
(this package imports nothing heavy, so a dataset module can be imported alone)."""
