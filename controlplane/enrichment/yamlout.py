"""A small block-style YAML writer for node configs.

PyYAML's emitter is general and slow (most of an enrichment run went there). Node
configs are plain trees of mappings, lists, strings, integers and booleans, so this
writer handles exactly those, quotes every string that a YAML 1.1 reader could take
for anything but that string, and is checked by a round-trip property test.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

_PLAIN = re.compile(r"[A-Za-z0-9_/.][A-Za-z0-9_/.,=+@:\- ]*")
_ESCAPE = re.compile(r"[^ !#-\[\]-~]")  # everything but printable ASCII, " and \
_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
_STR_TAG = "tag:yaml.org,2002:str"
_resolver = Resolver()


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    )


@functools.lru_cache(maxsize=65536)
def scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when unambiguous, else double-quoted."""
    if (
        _PLAIN.fullmatch(text)
        and ": " not in text
        and not text.endswith((" ", ":"))
        and _resolver.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        == _STR_TAG
    ):
        return text
    return '"' + _ESCAPE.sub(_escape, text) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return scalar(value)
    if value is None:
        return "null"
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


_EMPTY: tuple[Any, ...] = (None, {}, [], ())


class _Writer:
    """Collects the lines of one document."""

    def __init__(self, omit_empty: bool) -> None:
        self.lines: list[str] = []
        self.omit_empty = omit_empty

    def mapping(self, data: dict[Any, Any], indent: str, first: str) -> None:
        """Write ``data``; ``first`` prefixes the first line (``- `` in lists)."""
        out, lead, wrote = self.lines, first, False
        for key, value in data.items():
            if self.omit_empty and value in _EMPTY:
                continue
            name, wrote = scalar(str(key)), True
            if isinstance(value, dict) and value:
                out.append(f"{lead}{name}:")
                self.mapping(value, indent + "  ", indent + "  ")
            elif isinstance(value, list | tuple) and value:
                out.append(f"{lead}{name}:")
                self.sequence(value, indent)
            elif isinstance(value, dict):
                out.append(f"{lead}{name}: {{}}")
            elif isinstance(value, list | tuple):
                out.append(f"{lead}{name}: []")
            else:
                out.append(f"{lead}{name}: {_value(value)}")
            lead = indent
        if not wrote:
            out.append(f"{first}{{}}")

    def sequence(self, items: list[Any] | tuple[Any, ...], indent: str) -> None:
        for item in items:
            if isinstance(item, dict):
                self.mapping(item, indent + "  ", indent + "- ")
            elif isinstance(item, list | tuple):
                raise TypeError("nested lists are not part of a node config")
            else:
                self.lines.append(f"{indent}- {_value(item)}")


def dump(data: dict[Any, Any], *, omit_empty: bool = False) -> str:
    """``data`` as a block-style YAML document ending in a newline.

    ``omit_empty`` leaves out keys whose value is None or an empty collection.
    """
    writer = _Writer(omit_empty)
    writer.mapping(data, "", "")
    return "\n".join(writer.lines) + "\n"
