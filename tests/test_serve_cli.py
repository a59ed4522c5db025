"""`astforge-serve` picks the autocomplete model the catalog holds, and says what to materialize when there is none."""

from __future__ import annotations

import json

import pytest

from resources import DuckDBCatalog
from resources.serve import main, model_folders


def _register(catalog: DuckDBCatalog, asset: str, folder, upstream: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    catalog.publish_partition(asset_key=asset, partition="all", data_version=asset[-8:], path=folder, run_id="r",
                              rows=0, upstream=upstream)


def test_latest_m2_else_m1_else_a_clear_error(astforge_home, tmp_path, capsys):
    catalog = DuckDBCatalog()
    with pytest.raises(LookupError, match="materialize the autocomplete group"):
        model_folders(catalog, None)
    assert main(["--port", "1"]) == 2 and "materialize the autocomplete group" in capsys.readouterr().err
    _register(catalog, "autocomplete_base_model", tmp_path / "base")
    assert model_folders(catalog, "m0") == ("m0", tmp_path / "base", None)
    with pytest.raises(LookupError, match="autocomplete_stage_b_adapter or autocomplete_stage_a_adapter"):
        model_folders(catalog, None)
    _register(catalog, "autocomplete_stage_a_adapter", tmp_path / "m1")
    assert model_folders(catalog, None) == ("m1", tmp_path / "base", tmp_path / "m1")
    _register(catalog, "autocomplete_stage_b_adapter", tmp_path / "m2")
    assert model_folders(catalog, None) == ("m2", tmp_path / "base", tmp_path / "m2")
    assert model_folders(catalog, "m1")[2] == tmp_path / "m1"


def test_the_llama_cpp_backend_serves_the_models_gguf_export(astforge_home, tmp_path, capsys):
    from ml.models.gguf_export import GgufExport
    from resources.serve import StaleExport, gguf_file

    catalog = DuckDBCatalog()
    _register(catalog, "autocomplete_base_model", tmp_path / "base")
    _register(catalog, "autocomplete_stage_b_adapter", tmp_path / "m2")
    assert gguf_file(catalog, "m2", None) is None
    assert main(["--backend", "llama_cpp", "--port", "1"]) == 2
    assert "autocomplete_stage_b_gguf is not materialized: run gguf_export_job" in capsys.readouterr().err
    folder = tmp_path / "gguf"
    _register(catalog, "autocomplete_stage_b_gguf", folder, {"autocomplete_stage_b_adapter": "_adapter"})
    export = GgufExport(folder=folder, files={"f16": "model-f16.gguf", "q8_0": "model-q8_0.gguf"},
                        modelfile="Modelfile", template="{{ .Prompt }}", stops=[])
    (folder / "gguf_export.json").write_text(json.dumps(export.to_json()))
    assert gguf_file(catalog, "m2", None) == folder / "model-q8_0.gguf"  # the quantized file by default
    assert gguf_file(catalog, "m2", "f16") == folder / "model-f16.gguf"
    with pytest.raises(LookupError, match="no q4_k_m file"):
        gguf_file(catalog, "m2", "q4_k_m")
    assert gguf_file(catalog, "m1", None) is None  # M1 was not exported
    # M2 re-trained after the export: the export is stale, never served in its place
    catalog.publish_partition(asset_key="autocomplete_stage_b_adapter", partition="all", data_version="retrained",
                              path=tmp_path / "m2", run_id="r2", rows=0)
    with pytest.raises(StaleExport, match="re-run gguf_export_job"):
        gguf_file(catalog, "m2", None)
    assert main(["--backend", "llama_cpp", "--port", "1"]) == 2
    assert "exported from another autocomplete_stage_b_adapter" in capsys.readouterr().err
