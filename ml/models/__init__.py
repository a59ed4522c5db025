"""Base language models: what a ``base_model`` setting names (tiny, packaged, GGUF, hub, folder) and converting
GGUF files into ordinary Hugging Face folders."""
