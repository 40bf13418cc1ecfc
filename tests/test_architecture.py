"""The layout's promises, checked on the source: imports run one way, SQL stays in db/, listing is cheap.

{cli, app} -> gallery -> {indexer, db}. indexer and db never import each other or anything above them; app
never reaches past the gallery API; the CLI may import app only to launch it. Only db/ and the store
(gallery/store.py, which owns the sessions) import sqlalchemy.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "cli", "db", "gallery", "indexer", "server")

# package -> top-level packages of this project it must never import
FORBIDDEN = {
    "indexer": {"db", "gallery", "cli", "app", "server"},
    "db": {"indexer", "gallery", "cli", "app", "server"},
    "gallery": {"cli", "app", "server"},
    "app": {"cli", "db", "indexer", "server"},
    "server": {"cli", "app", "db", "indexer"},
    "cli": {"db", "indexer"},
}
SQL_ALLOWED = ("db/", "gallery/store.py")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def test_the_scan_sees_every_package_and_resolves_relative_imports():
    files = _modules()
    assert {p.relative_to(REPO).parts[0] for p in files} == set(PACKAGES)
    names = {n for _, n in _imports(REPO / "indexer" / "embedders" / "__init__.py")}
    assert any(n.startswith("indexer.embedders.") for n in names), names  # `from .registry import ...`


def test_imports_run_one_way():
    bad = []
    for path in _modules():
        rel = path.relative_to(REPO)
        forbidden = FORBIDDEN[rel.parts[0]]
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in forbidden and not (rel.parts[0] == "cli" and name == "app.launch"):
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_db_and_the_store_import_sqlalchemy():
    bad = []
    for path in [*_modules(), *(REPO / "benchmarks").rglob("*.py")]:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(SQL_ALLOWED):
            continue
        bad += [f"{rel}:{line} imports {name}" for line, name in _imports(path) if name.split(".")[0] == "sqlalchemy"]
    assert not bad, "\n".join(bad)


def test_the_checks_would_catch_a_violation(tmp_path):
    probe = REPO / "gallery" / "_probe_for_test.py"
    probe.write_text("from sqlalchemy import select\nfrom cli import render\n")
    try:
        with pytest.raises(AssertionError, match="_probe_for_test.py:1 imports sqlalchemy"):
            test_only_db_and_the_store_import_sqlalchemy()
        with pytest.raises(AssertionError, match="_probe_for_test.py:2 imports cli"):
            test_imports_run_one_way()
    finally:
        probe.unlink()


def test_listing_embedders_and_cli_help_import_no_torch():
    code = ("import sys\n"
            "from gallery.config import DEFAULT_MODELS\n"
            "from indexer.embedders import available_embedders\n"
            "from cli.main import cli\n"
            "assert 'torch' not in sys.modules and 'sqlalchemy' not in sys.modules, sorted(sys.modules)\n"
            "print(','.join(available_embedders()), ','.join(DEFAULT_MODELS))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dlib,facenet,resnet50", "dlib,facenet,resnet50"]


def test_weights_status_and_the_cli_models_command_load_embedder_modules_on_demand():
    # A fresh process has imported no embedder module: asking for weights must import it, not fail.
    code = ("from gallery.manage.models import list_models\n"
            "print(sorted(s.name for s in list_models()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['dlib', 'facenet', 'resnet50']"
