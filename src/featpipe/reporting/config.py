"""`report:` the HTML report's section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from featpipe.sections import Section


class ReportConfig(Section):
    """`report:` the HTML report (`report: false` turns it off)."""

    enabled: bool = Field(True, description="Build the report.", json_schema_extra={"cli": False})
    human_baseline: float | None = Field(None, ge=0, le=1, description="Human score on the main metric, drawn as "
                                         "a reference line in the leaderboard (e.g. 0.9).")

    @model_validator(mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v
