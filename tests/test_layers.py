"""A lower layer must not import a higher one (DESIGN.md's layer picture)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "replearn"
LAYER = {
    "config": 0, "registry": 0, "dist": 0, "errors": 0, "fileio": 0, "schedules": 0, "allocator": 0,
    "data": 1, "views": 1, "nn": 1, "losses": 1,
    "methods": 2, "semisup": 2,
    "train": 3, "evaluate": 3, "embed": 3, "report": 3,
    "cli": 4,
}  # fmt: skip


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "replearn":
        return None
    if parts[1:] == ["__version__"]:
        return 0  # a constant in the package root
    if len(parts) == 1 or parts[1] not in LAYER:
        return 4  # the package root (and its lazy API): only the CLI may use it
    return LAYER[parts[1]]


def upward_imports(root: Path = PKG) -> list[str]:
    bad = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue
        own = LAYER[rel.parts[0].removesuffix(".py")]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "replearn":  # from replearn import dist -> replearn.dist
                    names = [f"replearn.{a.name}" for a in node.names]
                else:
                    names = [node.module]
            for name in names:
                layer = _layer_of(name)
                if layer is not None and layer > own:
                    bad.append(f"{rel}:{node.lineno} imports {name}")
    return bad


def test_every_module_has_a_layer():
    for path in PKG.iterdir():
        if path.name in ("__init__.py", "__main__.py", "__pycache__", "py.typed"):
            continue
        assert path.name.removesuffix(".py") in LAYER, f"{path.name} has no layer in DESIGN.md's picture"


def test_no_upward_imports():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "losses").mkdir()
    (tmp_path / "losses" / "bad.py").write_text("from replearn.train.module import PretrainModule\n")
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "ok.py").write_text("from replearn.registry import Registry\nimport torch\n")
    assert upward_imports(tmp_path) == ["losses/bad.py:1 imports replearn.train.module"]
