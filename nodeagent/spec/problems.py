"""Validation problems that name the file, the service and the field."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True, order=True)
class Problem:
    """One validation error or warning, e.g. ``services/web.yaml: service web: ...``."""

    file: str
    service: str
    message: str

    def __str__(self) -> str:
        parts = [self.file, f"service {self.service}" if self.service else ""]
        return ": ".join([p for p in parts if p] + [self.message])


def loc_to_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic location as ``health_check.port`` or ``links[0].env``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself was invalid"
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_MESSAGES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}


def describe_error(error: Mapping[str, Any]) -> str:
    """Turn one pydantic error into ``field: message`` in our own words."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "missing":
        return f"missing {loc_to_path(loc)}"
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error.get("msg", "")))
    elif kind == "literal_error":
        message = f"must be one of {error.get('ctx', {}).get('expected', '')}"
    elif kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
    else:
        message = str(error.get("msg", "is invalid"))
    if kind != "value_error" and "input" in error:
        message += f" (got {_describe(error['input'])})"
    path = loc_to_path(loc)
    return f"{path}: {message}" if path else message


def problems_from(
    exc: ValidationError, file: str, service: str, prefix: Sequence[int | str] = ()
) -> list[Problem]:
    """Every error of ``exc`` as a :class:`Problem`, located under ``prefix``."""
    out = []
    for err in exc.errors(include_url=False):
        located: dict[str, Any] = {**err, "loc": (*prefix, *err["loc"])}
        out.append(Problem(file, service, describe_error(located)))
    return out


def unknown_fields(
    model: type[BaseModel], data: Any, prefix: Sequence[int | str] = ()
) -> list[str]:
    """Paths of keys in ``data`` that ``model`` does not know, nested models too."""
    if not isinstance(data, Mapping):
        return []
    found: list[str] = []
    names, nested = _field_names(model), _nested_models(model)
    for key, value in data.items():
        if key not in names:
            found.append(loc_to_path((*prefix, str(key))))
            continue
        sub = nested.get(key)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            found.extend(unknown_fields(sub, value, (*prefix, key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                found.extend(unknown_fields(sub, item, (*prefix, key, i)))
    return found


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


@functools.cache
def _nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Fields of ``model`` that hold further models, with those models."""
    found = {}
    for name, info in model.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is not None:
            found[name] = sub
    return found


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model nested in an annotation like ``tuple[Link, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems without repeats, grouped by file and service, otherwise as found."""
    return sorted(dict.fromkeys(problems), key=lambda p: (p.file, p.service))


def yaml_error(exc: Exception) -> str:
    """``invalid YAML (line 3, column 1): <what the parser said>``."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    reason = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
    return f"invalid YAML{where}: {reason}"
