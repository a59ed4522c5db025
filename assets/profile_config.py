"""Config fields whose default is the active profile's, read when a run builds its config, not when the code loads.

A field declared ``max_steps: PositiveInt | None = from_profile("ast", "phase1_steps")`` shows ``null`` in the
launchpad (a name field, whose Dagster enum cannot be null, offers ``profile`` among its choices instead); the step
that runs fills it from ``ASTFORGE_PROFILE`` (resources/settings.profile_value) as it validates its config. So the
code location loads the same on a CPU webserver and on a GPU worker (no CUDA probe, no profile frozen into the
schema), and a run takes the profile of the process that runs it. A value in the run config wins.
"""

from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field, model_validator

from resources.settings import profile_value

_KEY = "astforge_profile"
PROFILE = "profile"  # the choice a name field (Literal) offers for "the profile's"


def from_profile(section: str, attr: str, kind: str | None = None) -> Any:
    """The default of a field that takes ``attr`` of the active ``section`` profile (resources/settings.py):
    null, or ``"profile"`` for a name field (``kind="name"``)."""
    return Field(default=None if kind is None else PROFILE, json_schema_extra={_KEY: [section, attr]},
                 description=f"null / profile: the active profile's {section}.{attr} (ASTFORGE_PROFILE, at run time)")


class ProfileConfig(dg.Config):
    @model_validator(mode="before")
    @classmethod
    def _fill_from_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and _KEY in extra and filled.get(name) in (None, PROFILE):
                section, attr = extra[_KEY]
                filled[name] = profile_value(section, attr)
        return filled


def or_profile(names: Any) -> Any:
    """The ``Literal`` of ``names`` plus ``"profile"`` (a name field with a profile default)."""
    return Literal[(PROFILE, *get_args(names))]
