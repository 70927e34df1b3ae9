"""Cross-package checks on the installed workspace (run in the full workspace environment)."""

import re
import tomllib
from pathlib import Path

from facelab.core import cli

ROOT = Path(__file__).resolve().parent.parent


def member_pyprojects():
    paths = [ROOT / "shared" / "pyproject.toml", ROOT / "benchmarks" / "pyproject.toml"]
    paths += sorted((ROOT / "packages").glob("*/pyproject.toml"))
    return [tomllib.loads(p.read_text()) | {"_dir": p.parent} for p in paths]


def test_every_member_is_installed_and_listed_by_version():
    installed = cli.installed_packages()
    for proj in member_pyprojects():
        name = proj["project"]["name"]
        assert installed.get(name) == proj["project"]["version"], name


def test_every_member_has_the_shared_package_shape():
    for proj in member_pyprojects():
        d = proj["_dir"]
        name = proj["project"]["name"]
        module = proj["tool"]["uv"]["build-backend"]["module-name"]
        assert (
            module == "facelab." + name.removeprefix("facelab-").replace("-", "_")
            or name == "facelab-core"
        )
        for f in ("README.md", "CHANGELOG.md"):
            assert (d / f).is_file(), f"{name} lacks {f}"
        assert (d / "src" / Path(*module.split(".")) / "__init__.py").is_file()
        # PEP 420 namespace: never a facelab/__init__.py
        assert not (d / "src" / "facelab" / "__init__.py").exists(), name
        # sibling dependencies use a version range and the workspace source
        for dep in proj["project"]["dependencies"]:
            if dep.startswith("facelab-"):
                m = re.match(r"(facelab-[a-z-]+)(\[[a-z,-]+\])?>=[\d.]+,<[\d.]+$", dep)
                assert m, f"{name}: {dep!r} is not 'facelab-x[extras]>=a,<b'"
                assert proj["tool"]["uv"]["sources"][m.group(1)] == {"workspace": True}, dep


def test_method_packages_never_import_each_other():
    methods = {p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists()}
    for m in methods:
        for src in (ROOT / "packages" / m / "src").rglob("*.py"):
            text = src.read_text()
            for other in methods - {m}:
                assert not re.search(rf"facelab\.{other}\b", text), f"{src} imports facelab.{other}"
