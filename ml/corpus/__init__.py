"""Where source files come from (local folders, zip archives, Hugging Face datasets) and which are kept."""
