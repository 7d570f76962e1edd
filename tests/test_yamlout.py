"""The node-config YAML writer: whatever it writes, a YAML reader reads back."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.enrichment.yamlout import dump, scalar

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
leaves = st.one_of(texts, st.integers(-(2**64), 2**64), st.booleans())
trees = st.recursive(
    leaves,
    lambda inner: (
        st.dictionaries(texts, inner, max_size=4)
        | st.lists(st.dictionaries(texts, inner, min_size=1, max_size=3), max_size=3)
        | st.lists(leaves, max_size=3)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(texts, trees, max_size=5))
def test_round_trips_through_a_yaml_reader(doc: dict[str, Any]) -> None:
    assert yaml.safe_load(dump(doc)) == (doc or {})


@pytest.mark.parametrize(
    "text",
    [
        "yes",
        "no",
        "on",
        "Off",
        "true",
        "null",
        "~",
        "",
        "1",
        "0x1f",
        "1_000",
        "1:30",
        "1.5",
        ".inf",
        "2024-01-01",
        "<<",
        "=",
        "- a",
        "a: b",
        "a #b",
        "#c",
        "trailing ",
        "'q'",
        '"q"',
        "@x",
        "`x",
        "!tag",
        "&a",
        "*a",
        "[x]",
        "{x}",
        "x:",
        "%x",
        "|",
        ">",
    ],
)
def test_ambiguous_strings_are_quoted_and_read_back_as_strings(text: str) -> None:
    assert yaml.safe_load(f"k: {scalar(text)}") == {"k": text}


@pytest.mark.parametrize(
    "text",
    [
        "web",
        "/var/lib/images/vmlinux-6.1",
        "console=ttyS0 reboot=k panic=1",
        "fw-web",
        "AA:FC:00:00:00:01",
        "1.4.2",
        "http://1.2.3.4:80",
    ],
)
def test_ordinary_strings_stay_plain(text: str) -> None:
    assert scalar(text) == text


def test_block_layout_matches_the_contract_examples() -> None:
    doc = {
        "node": "n",
        "services": [
            {
                "name": "a",
                "env": {"K": "v"},
                "port_forwards": [{"host_port": 1, "vm_port": 2}],
            }
        ],
    }
    assert dump(doc) == (
        "node: n\nservices:\n- name: a\n  env:\n    K: v\n"
        "  port_forwards:\n  - host_port: 1\n    vm_port: 2\n"
    )
