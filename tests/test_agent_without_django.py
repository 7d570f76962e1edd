"""The agent package runs on hosts without Django: importing it must not need it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import nodeagent

BLOCK_DJANGO = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django.") or name.startswith("controlplane"):
            raise ImportError(f"{name} must not be imported by nodeagent")
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok")
"""


def test_every_nodeagent_module_imports_without_django() -> None:
    root = Path(nodeagent.__file__).parent
    found = pkgutil.walk_packages([str(root)], prefix="nodeagent.")
    modules = ["nodeagent", *(m.name for m in found)]
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_DJANGO, *modules],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "nodeagent.spec.node" in modules
