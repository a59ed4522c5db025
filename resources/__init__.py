"""Configurable resources: the catalog, the artifact store and the corpus sources."""

from resources.artifacts import ArtifactStore
from resources.catalog import DuckDBCatalog
from resources.corpus import CorpusResource

__all__ = ["ArtifactStore", "CorpusResource", "DuckDBCatalog"]
