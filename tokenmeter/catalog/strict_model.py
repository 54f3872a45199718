"""The strict pydantic base the catalog file's models share, and the field types they have in common.

Every problem a validator finds is raised as a ``PydanticCustomError`` that ``catalog_file`` turns into
the catalog's message (file, entry, field, fix): ``problem`` for a complete message, ``field_problem``
for a message about a field below the one the error is on (a tier of a price, a price of a history).
"""

from __future__ import annotations

import difflib
import math
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.functional_validators import BeforeValidator, model_validator
from pydantic.types import StringConstraints
from pydantic_core import PydanticCustomError


def problem(message: str) -> PydanticCustomError:
    """A complete message of a validator's own (field path included), reported as it is."""
    return PydanticCustomError("catalog", message)


def field_problem(field: str, text: str) -> PydanticCustomError:
    """``<field> <text>``, ``field`` relative to the field the error is raised on (e.g. ``tiers[1].up_to``)."""
    return PydanticCustomError("field_problem", "{field} {text}", {"field": field, "text": text})


Text = Annotated[str, StringConstraints(pattern=r"\S")]  # not blank; kept as written
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Exact: a YAML 0.1 is a float, and Decimal(0.1) is not 0.1, so a float is read through str().
_FLOAT_AS_TEXT = BeforeValidator(
    lambda value: str(value) if isinstance(value, float) and math.isfinite(value) else value
)
Amount = Annotated[Decimal, _FLOAT_AS_TEXT, Field(strict=False, ge=0)]


class Strict(BaseModel):
    # strict: YAML has typed every scalar already, so "1" is no number here and 1 no string.
    model_config = ConfigDict(extra="forbid", strict=True)
    # Names people write for a field of ours (another API's word for it): the did-you-mean hint.
    field_hints: ClassVar[dict[str, str]] = {}

    @classmethod
    def field_names(cls) -> list[str]:
        """The names a file writes: a field's alias where it has one (``from``), else its name."""
        return [info.alias or name for name, info in cls.model_fields.items()]

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        # Checked before the fields, as before, to name the allowed ones and a likely fix:
        # pydantic's own extra="forbid" error does neither.
        names = cls.field_names()
        unknown = [str(key) for key in data if key not in names] if isinstance(data, dict) else []
        if unknown:
            hint = cls.field_hints.get(unknown[0]) or next(iter(difflib.get_close_matches(unknown[0], names, 1)), None)
            fix = (f' (did you mean "{hint}"?)' if hint else "") + f"; allowed: {', '.join(names)}"
            raise PydanticCustomError("unknown_field", "unknown field", {"field": unknown[0], "fix": fix})
        return data
