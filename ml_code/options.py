"""The options model every job shares (training, evaluation, preprocessing).

A job declares its options once, as an :class:`OptionsModel` whose fields are made with
:func:`option` (type, default, help, allowed values). The job parses SM_HPS with
:func:`parse_model`; the Dagster assets build their run-config classes from the same
fields with :func:`config_fields`, so a name or a default exists in one place.

Free of torch and dagster: the Dagster code location imports it.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

# Keys the SageMaker SDK or the runner adds to SM_HPS; they are not options of ours.
RESERVED_PREFIXES = ("sagemaker_", "_")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, minimum: float | None = None,
           maximum: float | None = None, above: float | None = None) -> Any:
    """One row of the options table: ``Field`` with the help text and the allowed values kept
    as metadata (``json_schema_extra``), so :func:`options_table` and the Dagster config can
    show them and :meth:`OptionsModel._check_allowed` enforces them with one message style."""
    allowed = {"choices": list(choices) if choices else None, "minimum": minimum, "maximum": maximum, "above": above}
    return Field(default=default, description=help,
                 json_schema_extra={k: v for k, v in allowed.items() if v is not None} or None)


def allowed_values(info: FieldInfo) -> dict[str, Any]:
    """The ``choices`` / ``minimum`` / ``maximum`` / ``above`` metadata of an option (may be empty)."""
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def describe_allowed(info: FieldInfo) -> str:
    """Human text for an option's allowed values, e.g. ``sampler|loss|both|none`` or ``1..8``."""
    allowed = allowed_values(info)
    if "choices" in allowed:
        return "|".join(allowed["choices"])
    if "minimum" in allowed and "maximum" in allowed:
        return f"{allowed['minimum']}..{allowed['maximum']}"
    if "minimum" in allowed:
        return f">= {allowed['minimum']}"
    if "above" in allowed:
        return f"> {allowed['above']}"
    return ""


class OptionsModel(BaseModel):
    """Base of every job's options model: unknown names rejected, ``""`` read as "unset"
    (SageMaker passes every value as a string), allowed values checked with messages that
    name the option."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value == "" else value

    @model_validator(mode="after")
    def _check_allowed(self) -> "OptionsModel":
        problems = []
        for name, info in type(self).model_fields.items():
            value, allowed = getattr(self, name), allowed_values(info)
            if value is None or not allowed:
                continue
            ok = (value in allowed["choices"] if "choices" in allowed else True) \
                and value >= allowed.get("minimum", value) and value <= allowed.get("maximum", value) \
                and ("above" not in allowed or value > allowed["above"])
            if not ok:
                problems.append(f"{name} must be {describe_allowed(info)}, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def parse_model(model: type[OptionsModel], values: dict[str, Any], job: str) -> OptionsModel:
    """``model(**values)`` with reserved keys dropped and errors turned into one ValueError
    that names each bad option (an unknown one with the list of known ones)."""
    values = {k: v for k, v in values.items() if not k.startswith(RESERVED_PREFIXES)}
    known = sorted(model.model_fields)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {job} option(s) {unknown}; known options: {known}")
    try:
        return model(**values)
    except ValidationError as exc:
        raise ValueError("; ".join(_error_text(err) for err in exc.errors())) from None


def _error_text(err: dict[str, Any]) -> str:
    """One pydantic error as ``hyperparameter NAME=VALUE is not a valid TYPE`` or the
    validator's own message (which already names the option)."""
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    name = ".".join(str(p) for p in err["loc"])
    return f"hyperparameter {name}={err.get('input')!r} is not valid: {err['msg']}"


def options_table(model: type[OptionsModel]) -> list[dict[str, Any]]:
    """The options as rows (name, type, default, allowed, help): what ``--help`` prints and
    what the docs and the Dagster config descriptions are made from."""
    return [{"name": name, "type": _type_name(info.annotation), "default": info.default,
             "allowed": describe_allowed(info), "help": info.description or ""}
            for name, info in model.model_fields.items()]


def _type_name(annotation: Any) -> str:
    """``int`` or ``int | None``."""
    optional = type(None) in getattr(annotation, "__args__", ())
    return base_type(annotation).__name__ + (" | None" if optional else "")


def base_type(annotation: Any) -> type:
    """``int`` for ``int`` and for ``Optional[int]``."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return args[0] if args else annotation




def config_fields(model: type[OptionsModel], *, unset_default: bool,
                  skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{name: (type, Field)}`` for ``pydantic.create_model`` (a Dagster ``Config`` built
    from a job's options): the option's help, allowed values and job default in the
    description. ``unset_default``: every field is Optional with default None, meaning "the
    job's default, or the recipe's" (training, whose recipes change defaults); otherwise the
    field keeps the option's type and default (jobs without recipes)."""
    fields: dict[str, tuple[Any, Any]] = {}
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        allowed = describe_allowed(info)
        text = (info.description or "") + (f" [{allowed}]" if allowed else "") + f" (job default: {info.default})"
        if unset_default:
            fields[name] = (Optional[base_type(info.annotation)], Field(default=None, description=text))
        else:
            fields[name] = (info.annotation, Field(default=info.default, description=text))
    return fields
