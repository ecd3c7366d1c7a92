"""Which parameters take part: name patterns and the floating-point rule.

Task vectors (eq. 1) are defined over floating-point parameters only: integer buffers such as
CLIP's ``position_ids`` never enter a task vector and are copied from the base model.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict

from rmtllmf.fusion.safetensors_format import DtypeLike


class ParamFilter(BaseModel):
    """Glob patterns over parameter names (``fnmatch``): a name takes part when it matches one of
    ``include`` and none of ``exclude``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        """Whether the parameter ``name`` is selected."""
        return any(fnmatchcase(name, p) for p in self.include) and not any(
            fnmatchcase(name, p) for p in self.exclude
        )


ALL_PARAMS = ParamFilter()


def is_floating(dtype: DtypeLike) -> bool:
    """Only floating-point tensors are part of task vectors and merges."""
    return dtype.is_floating_point
