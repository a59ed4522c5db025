"""Grammar-constrained generation of compact Python AST text."""

from ml.constrained.python_grammar import GrammarLogitsProcessor, GrammarState, PythonAstGrammar

__all__ = ["GrammarLogitsProcessor", "GrammarState", "PythonAstGrammar"]
