"""The base of every spec model: frozen, extra keys forbidden, no inf / nan."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    # extra="forbid": pydantic silently drops unknown keys otherwise, hiding typos in specs.
    # allow_inf_nan=False: `.inf` / `.nan` in a spec (or --set) is refused, not trained with.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
