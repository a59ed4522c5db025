"""AST-first vs plain text: the same base, functions, LoRA settings and steps, trained on AST tokens or on source."""
