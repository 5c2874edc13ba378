"""The base every configuration model derives from: strict, frozen, unknown keys rejected.

Kept in its own tiny module so that every configuration section (data, training, backends)
can share it without importing the whole profile loader.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A configuration section: immutable once loaded; unknown keys and wrong types are errors.

    Profiles are validated in pydantic's JSON mode (see `finetune_phi.settings`), so strings
    become `Path`s where a path is declared, but "3" never silently becomes the integer 3.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
