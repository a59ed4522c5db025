"""Fixed, offline single-line fill-in-the-middle requests cut from the Python standard library: the same prompts on
every machine, for comparing engines (bench/serve.py) and checking an exported model against its source (the GGUF
export's agreement check)."""

from __future__ import annotations

import importlib
from pathlib import Path

SOURCE_MODULES = ("textwrap", "argparse", "difflib", "json.decoder")
PREFIX_LINES = 24
SUFFIX_LINES = 8


def stdlib_fim_spots(n: int, modules: tuple[str, ...] = SOURCE_MODULES) -> list[tuple[str, str, str]]:
    """``n`` (prefix, line, suffix) triples: a code line of a stdlib module without its indentation, the lines above
    it and its indentation, and the lines below it. Evenly spread over the modules' lines."""
    spots: list[tuple[list[str], int]] = []
    for name in modules:
        lines = Path(importlib.import_module(name).__file__).read_text().splitlines()
        for i in range(PREFIX_LINES, len(lines) - SUFFIX_LINES):
            code = lines[i].strip()
            # A line worth completing: some code, not a comment, a docstring line or a lone bracket.
            if len(code) >= 12 and not code.startswith(("#", '"', "'")) and any(c.isalpha() for c in code):
                spots.append((lines, i))
    if len(spots) < n:
        raise ValueError(f"only {len(spots)} completable lines in {', '.join(modules)}, {n} wanted")
    step = len(spots) / n
    triples = []
    for k in range(n):
        lines, i = spots[int(k * step)]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        triples.append(("\n".join(lines[i - PREFIX_LINES:i]) + "\n" + indent, lines[i].strip(),
                        "\n" + "\n".join(lines[i + 1:i + 1 + SUFFIX_LINES]) + "\n"))
    return triples


def stdlib_fim_cases(n: int, modules: tuple[str, ...] = SOURCE_MODULES, max_tokens: int = 24) -> list[dict]:
    """``n`` single-line FIM requests (OpenAI completions bodies) at :func:`stdlib_fim_spots`: the cursor after the
    indentation of the line, ``temperature`` 0, ``stop: ["\\n"]``."""
    return [{"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "temperature": 0, "stop": ["\n"]}
            for prefix, _, suffix in stdlib_fim_spots(n, modules)]
