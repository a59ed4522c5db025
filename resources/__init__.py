"""Configurable resources: the catalog, the artifact store and the corpus sources."""

from resources.artifacts import ArtifactStore
from resources.catalog import DuckDBCatalog
from resources.compute import ComputeResource
from resources.corpus import CorpusResource
from resources.teacher import TeacherResource

__all__ = ["ArtifactStore", "ComputeResource", "CorpusResource", "DuckDBCatalog", "TeacherResource"]
