"""What the catalog raises, whichever database holds it (resources/catalog.py re-exports these)."""

import dagster as dg


class CatalogLockTimeout(RuntimeError):
    """Another writer (or a rebuild) held the catalog longer than the resource's ``lock_timeout_s``."""


class CatalogDamaged(dg.Failure):
    """The catalog file cannot be read. The artifacts are not affected: the catalog is rebuilt from them."""


class CatalogUnavailable(dg.Failure):
    """The catalog's database cannot be reached or refuses the connection."""
