"""Reversible AST codecs: one per language, registered in ``ml.languages``."""
