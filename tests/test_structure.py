"""The package's shape: imports only point down the layers, no cycles, and family checks only in loading."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sdedit"

# Lowest first.  A module may import its own layer or lower ones, never a higher one.
LAYERS = [
    ["version", "errors", "files", "progress"],
    ["engine"],
    ["settings", "images", "devices", "crops", "precision", "control_images", "tiling", "color_match", "outpainting"],
    ["loading"],
    ["families"],
    ["loader"],
    ["api", "compositing"],
    ["research"],
    ["frontends"],
    ["__init__", "__main__"],
]
# Front-ends never import each other; cli dispatches to the others, ui is drawn from ui_handlers and ui_server.
FRONTEND_IMPORTS_ALLOWED = {"cli": {"common", "batch", "sweep", "ui", "ui_server"},
                            "ui": {"common", "ui_handlers", "ui_server"}}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def layer(name: str) -> int:
    head = name.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if head in names)


def imports(path: Path) -> set[str]:
    """Every sdedit module a file imports, at module level or inside functions."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            candidates = [f"{mod}.{a.name}" if mod else a.name for a in node.names] + [mod]
            found.update(c for c in candidates if (PACKAGE / (c.replace(".", "/") + ".py")).is_file()
                         or (PACKAGE / c.replace(".", "/") / "__init__.py").is_file())
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n.removeprefix("sdedit.") for n in names if n.startswith("sdedit."))
    return {f for f in found if f and f != name}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_imports_only_point_down_the_layers():
    upward = [(m, i) for m, deps in GRAPH.items() for i in deps
              if m not in ("__init__", "__main__") and layer(i) > layer(m)]
    assert not upward, upward


def test_front_ends_do_not_import_each_other():
    bad = []
    for m, deps in GRAPH.items():
        if m.startswith("frontends."):
            own = m.split(".")[1]
            for d in deps:
                if d.startswith("frontends.") and d.split(".")[1] not in FRONTEND_IMPORTS_ALLOWED.get(own, {"common"}):
                    bad.append((m, d))
    assert not bad, bad


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in GRAPH.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(trail + [m, d])}")
            if d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_the_layer_table_knows_every_module():
    for m in GRAPH:
        layer(m)


def test_family_classes_are_asked_about_only_when_loading():
    """`isinstance(x, SomeModel)` belongs in loading: everything else uses the model interface."""
    families = {"Model"} | {node.name for path in (PACKAGE / "families").glob("*.py")
                            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
                            and any(getattr(b, "id", None) == "Model" for b in node.bases)}
    assert {"PixelModel", "StableDiffusionModel", "StableDiffusion3Model", "FluxModel", "QwenImageModel"} <= families
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                kinds = node.args[1]
                names = {getattr(e, "id", getattr(e, "attr", None)) for e in getattr(kinds, "elts", [kinds])}
                if names & families and module_name(path) != "loader":
                    offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, offenders
