"""`heads[]:` one head and its extra constructor arguments."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from featpipe.sections import Section, shorthand


class HeadConfig(Section):
    """One entry of `heads:` (a bare string is its name)."""

    _short = shorthand("name")
    name: str = Field(description="`logistic`, `mlp`, `lgbm` or `all`.")
    params: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments of the head "
                                   "(e.g. `{C_grid: [0.1, 1]}`); part of its up-to-date check.")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from featpipe.heads import HEAD_CHOICES

        if v not in HEAD_CHOICES:
            raise ValueError(f"unknown head {v!r}; expected one of {', '.join(HEAD_CHOICES)}")
        return v

    @model_validator(mode="after")
    def _params_exist(self) -> HeadConfig:
        import difflib
        import inspect

        from featpipe.heads import HEADS, head_names

        fixed = {"self", "task", "preprocess", "class_weight", "refit", "metric", "seed"}  # set from fit.*
        for name in head_names(self.name):
            allowed = set(inspect.signature(HEADS[name].__init__).parameters) - fixed
            for key in self.params:
                if key not in allowed:
                    near = difflib.get_close_matches(key, sorted(allowed), n=1)
                    hint = f" (did you mean {near[0]!r}?)" if near else f"; it takes {', '.join(sorted(allowed))}"
                    raise ValueError(f"params.{key}: not a parameter of the {name} head{hint}")
        return self
