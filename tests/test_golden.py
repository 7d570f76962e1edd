"""The bundled example enriches to exactly the reviewed output in tests/golden/.

After an intended change, regenerate with FIREWORK_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

from controlplane.enrichment import run_pipeline

GOLDEN = Path(__file__).parent / "golden" / "nodes"
EXAMPLE = Path(__file__).parent.parent / "examples" / "enricher-input"


def test_example_repository_matches_golden_node_configs() -> None:
    result = run_pipeline(EXAMPLE)
    assert result.ok, [str(e) for e in result.errors]
    if os.environ.get("FIREWORK_UPDATE_GOLDEN") == "1":
        for old in GOLDEN.glob("*.yaml"):
            old.unlink()
        for node_type, text in result.configs.items():
            (GOLDEN / f"{node_type}.yaml").write_text(text)
    expected = {p.stem: p.read_text() for p in sorted(GOLDEN.glob("*.yaml"))}
    assert result.configs == expected


def test_example_warns_about_the_ignored_source_image() -> None:
    result = run_pipeline(EXAMPLE)
    assert [str(w) for w in result.warnings] == [
        "services/report-worker.yml: service report-worker: "
        "unknown field source_image ignored"
    ]
