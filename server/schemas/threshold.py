"""A confidence threshold as a request carries it (v1 admin body, v2 `threshold` parameter)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# strict: neither `true` nor "0.5" pass as a number; finite: NaN, inf and 1e309 are refused.
Threshold = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]
