"""Fast, safe YAML reading for service specs.

libyaml (through PyYAML's C parser) builds the node tree; the tree is then turned
into Python values here instead of by PyYAML's general constructor, which spent more
time than the parser itself. Semantics stay PyYAML's safe ones (YAML 1.1 scalars,
merge keys, anchors); tags other than the standard ones are errors, and recursive
aliases are refused instead of building cyclic data.
"""

from __future__ import annotations

import functools
from typing import Any

from yaml._yaml import CParser  # libyaml: PyYAML's wheels always ship it
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_resolver = Resolver()


@functools.lru_cache(maxsize=16384)
def _resolve_scalar(value: str, plain: bool, quoted: bool) -> str:
    tag = _resolver.resolve(ScalarNode, value, (plain, quoted))  # type: ignore[no-untyped-call]
    return str(tag)


class _Composer(CParser, Resolver):
    """libyaml's parser and composer with a memoised scalar resolver."""

    def __init__(self, stream: str | bytes) -> None:
        CParser.__init__(self, stream)
        Resolver.__init__(self)

    # No path resolvers are registered, so the per-node bookkeeping PyYAML does
    # for them is skipped, and collections get their default tags.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            return _resolve_scalar(value, implicit[0], implicit[1])
        return _MAP if kind is MappingNode else _SEQ


class _Builder(SafeConstructor):
    """Turns a composed node tree into plain Python values."""

    def __init__(self) -> None:
        super().__init__()
        self._done: dict[int, Any] = {}
        self._busy: set[int] = set()

    def build(self, node: Node) -> Any:
        if type(node) is ScalarNode:  # most values are plain strings: fast path
            return node.value if node.tag == _STR else self._scalar(node)
        key = id(node)
        if key in self._done:  # an alias: share the value, as PyYAML does
            return self._done[key]
        if key in self._busy:
            raise ConstructorError(
                None, None, "recursive aliases are not supported", node.start_mark
            )
        self._busy.add(key)
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            value: Any = [self.build(child) for child in node.value]
        elif isinstance(node, MappingNode) and node.tag == _MAP:
            value = self._mapping(node)
        else:
            raise ConstructorError(
                None, None, f"unsupported tag {node.tag}", node.start_mark
            )
        self._busy.discard(key)
        self._done[key] = value
        return value

    def _scalar(self, node: ScalarNode) -> Any:
        make = self.yaml_constructors.get(node.tag)
        if make is None or node.tag in (_MAP, _SEQ):
            raise ConstructorError(
                None, None, f"unsupported tag {node.tag}", node.start_mark
            )
        return make(self, node)

    def _mapping(self, node: MappingNode) -> dict[Any, Any]:
        self.flatten_mapping(node)  # resolves << merge keys in place
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.build(key_node)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    None, None, "found an unhashable key", key_node.start_mark
                ) from None
            out[key] = self.build(value_node)
        return out


def load(stream: str | bytes) -> Any:
    """The single YAML document in ``stream`` (None when empty)."""
    composer = _Composer(stream)
    try:
        node = composer.get_single_node()
    finally:
        composer.dispose()
    return None if node is None else _Builder().build(node)
