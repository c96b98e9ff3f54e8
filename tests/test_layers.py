"""The package's shape, checked: no import circles, and each layer imports only the layers below it."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import jobcast

PACKAGE = Path(jobcast.__file__).parent

#: The server's layers, lowest first: app/cli → routes → access → engine and hub → store → jobs and errors.
#: A module may import its own layer and the layers below, never one above. The wire format is pure and sits
#: with the jobs it describes, so the hub can encode each event once for every subscriber.
SERVER_LAYERS: list[set[str]] = [
    {
        "errors",
        "jobs",
        "scheduling",
        "validation",
        "backoff",
        "settings",
        "cursor",
        "logs",
        "metrics",
        "uvicorn_ws",
        "wire",
    },
    {"store"},
    {"context", "plugins", "estimates", "engine", "channel", "hub", "presence"},
    {"views", "openapi", "auth", "limits", "access", "origins", "http_errors"},
    {"api", "legacy", "push", "pages"},
    {"app", "runner", "connections", "cli", "workers", "worker"},
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, found through the source tree as installed."""
    found = {}
    for path in sorted(_sources()):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _sources() -> Iterator[Path]:
    for folder, _, files in os.walk(PACKAGE, followlinks=True):  # jobcast/server and the others are symlinks
        yield from (Path(folder) / file for file in files if file.endswith(".py"))


def imports(name: str, path: Path) -> Iterator[str]:
    """The jobcast modules ``name`` imports, at the top or inside a function (a deferred import is still one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("jobcast"))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level)
            if base.startswith("jobcast"):
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)


def _absolute(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parent = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*parent, *([module] if module else [])])


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target in imports(name, path) if target in known} - {name} for name, path in known.items()
    }


def test_there_are_no_import_circles() -> None:
    """No module reaches itself through its imports (a deferred import in a function counts)."""
    edges = graph()
    for start in edges:
        seen: set[str] = set()
        stack = list(edges[start])
        while stack:
            module = stack.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                stack.extend(edges[module])


def test_the_server_and_the_client_do_not_import_each_other() -> None:
    """jobcast.server and jobcast.client stand side by side; jobcast.agents, the contract, imports neither."""
    for module, targets in graph().items():
        for target in targets:
            if module.startswith("jobcast.server"):
                assert not target.startswith("jobcast.client"), (module, target)
            if module.startswith("jobcast.client"):
                assert not target.startswith("jobcast.server"), (module, target)
            if module.startswith("jobcast.agents"):
                assert not target.startswith(("jobcast.server", "jobcast.client")), (module, target)


def test_each_server_layer_imports_only_the_layers_below() -> None:
    """app/cli → routes → access and wire → engine and hub → store → jobs and errors, never upwards."""
    layer_of = {name: index for index, layer in enumerate(SERVER_LAYERS) for name in layer}
    server = {module: targets for module, targets in graph().items() if module.startswith("jobcast.server.")}
    for module, targets in server.items():
        own = layer_of[module.split(".")[2]]  # every server module has a layer: a new one must be placed
        for target in targets:
            if target.startswith("jobcast.server."):
                assert layer_of[target.split(".")[2]] <= own, f"{module} (layer {own}) imports {target}"


def test_the_checks_see_the_whole_package() -> None:
    """The graph holds the package's modules and their known edges, so the checks above cannot pass vacuously."""
    edges = graph()
    assert {"jobcast.cli", "jobcast.server.engine", "jobcast.client.subscribe", "jobcast.agents"} <= set(edges)
    assert "jobcast.server.store" in edges["jobcast.server.engine"]
    assert "jobcast.client.cli" in edges["jobcast.cli"] and "jobcast.server.cli" in edges["jobcast.cli"]
