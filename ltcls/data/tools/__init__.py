"""Split tools (stats, verify, make-split) and the long-tail profiles and published split facts they use."""
