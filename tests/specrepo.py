"""Build enricher input repositories in a temporary directory for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def base_service(name: str = "web", **fields: Any) -> dict[str, Any]:
    """A valid, networked service spec; ``fields`` override or add keys."""
    spec: dict[str, Any] = {
        "name": name,
        "image": f"/var/lib/images/{name}.ext4",
        "node_type": "general-purpose",
        "network": True,
    }
    spec.update(fields)
    return spec


def write_repo(
    root: Path,
    services: list[dict[str, Any]] | dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Write ``defaults.yaml`` and ``services/<file>.yaml`` under ``root``.

    ``services`` is a list (files named after each service, or ``svcN``) or a
    mapping of file name to spec.
    """
    (root / "services").mkdir(parents=True, exist_ok=True)
    if defaults is not None:
        (root / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    if isinstance(services, list):
        named = {}
        for i, spec in enumerate(services):
            name = spec.get("name") if isinstance(spec, dict) else None
            named[f"{name if isinstance(name, str) else f'svc{i}'}.yaml"] = spec
        services = named
    for file_name, spec in services.items():
        (root / "services" / file_name).write_text(yaml.safe_dump(spec))
    return root
