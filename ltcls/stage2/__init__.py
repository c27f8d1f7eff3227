"""Decoupled second stages: one runner (:mod:`ltcls.stage2.runner`: load the finished run, merge the method's
preset, run, compare, report) for every method registered in ``METHODS`` (:mod:`ltcls.stage2.methods` for
classification; plug-ins add theirs, e.g. detection's SimCal). Presets: :mod:`ltcls.stage2.presets`."""
