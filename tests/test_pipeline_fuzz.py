"""Random YAML documents and random field values: configs or errors, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.enrichment import run_pipeline
from nodeagent.spec import validate_node_config

FIELDS = [
    "name",
    "image",
    "node_type",
    "kernel",
    "initrd",
    "vcpus",
    "memory_mb",
    "kernel_args",
    "network",
    "port_forwards",
    "env",
    "links",
    "health_check",
    "metadata",
]
SUB_FIELDS = [
    "type",
    "port",
    "path",
    "interval",
    "timeout",
    "retries",
    "host_port",
    "vm_port",
    "service",
    "env",
    "protocol",
    "interface",
    "guest_mac",
    "guest_ip",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["web", "/img/a", "10s", "http", "tcp", "..", "/a/../b", "-"]),
    st.dates(),
)
keys = st.one_of(
    st.sampled_from(FIELDS + SUB_FIELDS), st.text(max_size=8), st.integers()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)
    ),
    max_leaves=20,
)
service_docs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))
documents = st.one_of(service_docs, values)
raw_texts = st.text(max_size=200) | st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")
)


def run_on(files: dict[str, str], defaults: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "services").mkdir()
        if defaults is not None:
            (root / "defaults.yaml").write_text(defaults)
        for name, text in files.items():
            (root / "services" / name).write_text(text)
        result = run_pipeline(root)
    if result.errors:
        assert result.configs == {}
        assert all(str(e) for e in result.errors)
    for text in result.configs.values():
        config, errors, _ = validate_node_config(yaml.safe_load(text))
        assert config is not None and not errors


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


fuzz = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz
@given(st.lists(documents, max_size=4), st.one_of(st.none(), documents))
def test_random_documents_give_configs_or_errors(
    docs: list[Any], defaults: Any
) -> None:
    files = {f"s{i}.yaml": dump(doc) for i, doc in enumerate(docs)}
    run_on(files, None if defaults is None else dump(defaults))


@fuzz
@given(st.lists(raw_texts, max_size=3), st.one_of(st.none(), raw_texts))
def test_random_text_gives_configs_or_errors(texts: list[str], defaults: Any) -> None:
    run_on({f"s{i}.yml": t for i, t in enumerate(texts)}, defaults)


@fuzz
@given(
    st.sampled_from(FIELDS),
    values,
    st.sampled_from(["health_check", "port_forwards", "links", "env", "metadata"]),
)
def test_one_random_field_in_a_valid_spec(field: str, value: Any, nested: str) -> None:
    spec: dict[str, Any] = {
        "name": "web",
        "image": "/img/web.ext4",
        "node_type": "gp",
        "network": True,
        "links": [{"service": "web", "env": "SELF", "port": 80}],
    }
    spec[field] = value
    run_on({"web.yaml": dump(spec)}, dump({nested: value}))


@fuzz
@given(
    st.one_of(values, st.dictionaries(st.sampled_from(["node", "services"]), values))
)
def test_random_node_configs_never_crash_validation(data: Any) -> None:
    config, errors, _ = validate_node_config(data, "nodes/x.yaml")
    assert (config is None) == bool(errors)
