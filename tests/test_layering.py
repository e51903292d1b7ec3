"""The core never imports modalities or eval; the package list installs every code folder under `unitok`."""

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_does_not_import_modalities_or_eval():
    offenders = []
    for path in (REPO / "unitok").rglob("*.py"):
        for name in _imports(path):
            if name.startswith(("unitok.modalities", "unitok.eval", "modalities", "eval")):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, offenders


def test_modalities_and_eval_import_the_core_by_its_installed_name():
    for folder in ("modalities", "eval"):
        for path in (REPO / folder).rglob("*.py"):
            bad = [n for n in _imports(path) if n.split(".")[0] in ("modalities", "eval")]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}: use unitok.modalities / unitok.eval"


def test_every_package_folder_is_installed_under_unitok():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for top, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([top, *rel.parts]))
    assert found == listed
    assert not any(p.split(".")[0] != "unitok" for p in listed)
