"""Imports only point down the layers (STYLE.md): a layer reaching up fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "harness"

# Lower number = lower layer. A module may import its own layer or any below.
LAYERS: dict[str, int] = {
    "harness.types": 0,
    "harness.errors": 1,
    "harness.gcpolicy": 1,
    "harness.settings": 2,
    "harness.safety": 2,
    "harness.aep": 3,
    "harness.codec": 3,
    "harness.canary": 3,
    "harness.findings": 3,
    "harness.coverage": 3,
    "harness.recording": 4,
    "harness.transport": 5,
    "harness.faultproxy": 5,
    "harness.credentials": 6,
    "harness.users": 6,
    "harness.adapters": 6,
    "harness.embedded": 6,
    "harness.probes": 7,
    "harness.monitor": 7,
    "harness.oracles": 8,
    "harness.resources": 8,
    "harness.run": 9,
    "harness.workloads": 10,
    "harness.distributed": 10,
    "harness.preflight": 10,
    "harness.scenario": 11,
    "harness.reporting": 12,
    "harness.soak": 13,
    "harness.session": 13,
    "harness.plugin": 14,
    "harness.cli": 15,
    "harness.__main__": 16,
    "harness": 16,
}
SOCKET_LIBRARIES = {"websockets", "aiohttp", "nats"}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name.startswith(("harness.reference", "harness._scenarios")):
            continue
        found.append((name, path))
    return found


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda v: str(v))
def test_imports_point_down(module, path):
    mine = layer_of(module)
    upward = [
        name
        for name in imports_of(path)
        if name.startswith("harness.")
        and not name.startswith("harness.reference")
        and layer_of(name) > mine
    ]
    assert upward == [], f"{module} (layer {mine}) imports higher layers: {upward}"


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda v: str(v))
def test_only_the_transport_layer_touches_sockets(module, path):
    if layer_of(module) == LAYERS["harness.transport"]:
        return
    used = {name.split(".")[0] for name in imports_of(path)} & SOCKET_LIBRARIES
    assert used == set(), f"{module} imports {used}; go through harness.transport"


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda v: str(v))
def test_oracles_and_the_core_never_import_pytest(module, path):
    if module in ("harness.plugin", "harness.cli"):
        return
    assert "pytest" not in {name.split(".")[0] for name in imports_of(path)}


def test_the_reference_service_shares_nothing_with_the_harness():
    for path in (ROOT / "reference").rglob("*.py"):
        harness_imports = {
            name
            for name in imports_of(path)
            if name.startswith("harness") and not name.startswith("harness.reference")
        }
        assert harness_imports == set(), f"{path.name} imports {harness_imports}"
