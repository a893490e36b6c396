"""The base every request model of the wire protocol shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown fields refused by name, no coercion (a number is not a string, `true` is not 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)
