"""Request body validation against the swagger definitions, with serde-like errors.

Firecracker deserialises bodies with serde and ``deny_unknown_fields`` (except for
``Metrics``), so the swagger definitions are tightened with
``additionalProperties: false`` before use, and validation errors are rewritten
into the messages serde would give.
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

SPEC_PATH = (
    Path(__file__).resolve().parents[3] / "shared/reference/firecracker-api.yaml"
)
SERDE_PREFIX = "An error occurred when deserializing the json body of a request: "
# Definitions whose Rust struct accepts unknown fields.
OPEN_DEFINITIONS = frozenset({"Metrics", "MmdsContentsObject"})
VCPU_MESSAGE = (
    "Machine config error: The number of vCPUs must be greater than 0, less than 32"
    " and must be 1 or an even number if SMT is enabled."
)


@cache
def definitions() -> dict[str, Any]:
    """The swagger definitions, closed against unknown fields where Firecracker is."""
    path = Path(os.environ.get("FCDOUBLE_SPEC", SPEC_PATH))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        spec = yaml.load(f, Loader=loader)
    defs: dict[str, Any] = copy.deepcopy(spec["definitions"])
    for name, schema in defs.items():
        if schema.get("type") == "object" and name not in OPEN_DEFINITIONS:
            schema.setdefault("additionalProperties", False)
    return defs


@cache
def _validator(definition: str) -> jsonschema.Draft4Validator:
    root = {"definitions": definitions(), "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft4Validator(root)


def check(definition: str, body: Any, raw: bytes) -> str | None:
    """Return Firecracker's fault message for an invalid body, or None."""
    if not isinstance(body, dict):
        return _serde(
            f"invalid type: {_describe(body)}, expected struct {definition}", raw
        )
    errors = list(_validator(definition).iter_errors(body))
    if not errors:
        return None
    # serde stops at the first problem in document order; the shallowest error is
    # the closest we can get without a streaming parser.
    error = min(errors, key=lambda e: (len(e.absolute_path), _rank(e.validator)))
    return _message(definition, error, raw)


def _rank(keyword: Any) -> int:
    order = ["additionalProperties", "type", "enum", "required"]
    return order.index(keyword) if keyword in order else len(order)


def _message(definition: str, error: jsonschema.ValidationError, raw: bytes) -> str:
    kind = error.validator
    instance = error.instance
    schema = error.schema
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = next(k for k in instance if k not in known)
        expected = ", ".join(f"`{k}`" for k in known)
        return _serde(f"unknown field `{extra}`, expected one of {expected}", raw)
    if kind == "required":
        missing = next(k for k in error.validator_value if k not in instance)
        return _serde(f"missing field `{missing}`", raw)
    if kind == "type":
        expected = _EXPECTED.get(str(error.validator_value), str(error.validator_value))
        return _serde(f"invalid type: {_describe(instance)}, expected {expected}", raw)
    if kind == "enum":
        variants = ", ".join(f"`{v}`" for v in error.validator_value)
        return _serde(f"unknown variant `{instance}`, expected one of {variants}", raw)
    if definition == "MachineConfiguration" and list(error.path) == ["vcpu_count"]:
        return VCPU_MESSAGE
    return _serde(f"invalid value: {_describe(instance)}, {error.message}", raw)


_EXPECTED = {
    "boolean": "a boolean",
    "integer": "an integer",
    "string": "a string",
    "object": "a map",
    "array": "a sequence",
}


def _describe(value: Any) -> str:
    """How serde names an unexpected JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{json.dumps(value)}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _serde(text: str, raw: bytes) -> str:
    # The column is where serde stopped; the end of the body is close enough.
    return f"{SERDE_PREFIX}{text} at line 1 column {len(raw)}."
