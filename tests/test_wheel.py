"""Packaging: ``data/`` sits beside ``interp/`` and is mapped into the package as ``interp.data`` (pyproject's
``package-dir``). A built wheel holds it and ``interp.kernels`` under ``interp/`` with the prompt files and the C++
source, and imports from an unpacked wheel alone. Nothing at the checkout's top level hides an installed
distribution from code run there."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Every package of the source tree (a folder with ``__init__.py``) by its import name, mapped folders included."""
    found = {}
    for prefix, folder in [("interp", ROOT / "interp"),
                           *((name, ROOT / path) for name, path in SETUPTOOLS["package-dir"].items())]:
        for init in sorted(folder.rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                rel = init.parent.relative_to(folder).parts
                found[".".join((prefix, *rel))] = init.parent
    return found


def test_every_package_is_listed_and_mapped():
    """The package list in pyproject names every package folder, so none is left out of a wheel."""
    assert SETUPTOOLS["package-dir"] == {"interp.data": "data"}
    assert not (ROOT / "interp" / "data").exists() and not (ROOT / "kernels").exists()
    assert sorted(SETUPTOOLS["packages"]) == sorted(package_folders())
    assert (ROOT / "data" / "prompts" / "ioi.json").is_file()



def test_no_top_level_folder_hides_an_installed_package():
    """Run from the checkout (pytest, a notebook, ``python -c``), its top level comes first on ``sys.path``, so a
    package folder there named like a dependency's module would be imported in its place (``transformers`` imports
    ``kernels``, the Hugging Face kernel loader)."""
    importable = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    importable |= {p.stem for p in ROOT.glob("*.py")}
    installed = {name: dists for name, dists in importlib.metadata.packages_distributions().items()
                 if "interp" not in dists}
    assert "interp" in importable and "data" in importable
    assert {name: installed[name] for name in importable if name in installed} == {}


CHECK = """
import json, sys
from importlib import resources
import interp, interp.data, interp.kernels
from interp.circuits import prompts
site = sys.argv[1]
print(json.dumps({
    "files": [m.__file__ for m in (interp, interp.data, interp.kernels)],
    "prompts": sorted(p.name for p in resources.files("interp.data").joinpath("prompts").iterdir()),
    "ioi": len(prompts.load_json("ioi")),
    "kernel": interp.kernels.sparse_decode.__module__,
    "compiled": interp.kernels.cpu_sparse.available(),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree, so that no build/ or egg-info folder lands in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("interp", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(tmp / "dist")],
                   check=True, cwd=tmp, capture_output=True, text=True)
    (built,) = (tmp / "dist").glob("interp-*.whl")
    return built


@pytest.mark.heavy
def test_wheel_holds_kernels_and_data_and_imports_alone(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"interp/kernels/__init__.py", "interp/kernels/sparse_decode.py", "interp/kernels/cpu_sparse.cc",
            "interp/data/__init__.py",
            "interp/data/prompts/ioi.json", "interp/data/prompts/capitals.json",
            "interp/data/audit/conditions.json"} <= set(names)
    assert not [n for n in names if n.startswith(("kernels/", "data/"))]
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == set(SETUPTOOLS["packages"])

    # Unpacked outside the checkout, with site-packages for the dependencies but no site hooks (-S): the editable
    # install's finder, which points back into the checkout, is not loaded.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]),
           "INTERP_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-S", "-c", CHECK, str(site)], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(site) for f in got["files"]), got["files"]
    assert got["prompts"] == ["capitals.json", "ioi.json"]
    assert got["ioi"] > 0 and got["kernel"] == "interp.kernels.sparse_decode"
    assert got["compiled"]  # the C++ source travels in the wheel and compiles from there


def test_wheel_installs_into_a_clean_venv_and_runs(wheel, default_model, tmp_path):
    """``pip install`` of the wheel into a new virtual environment (no editable install, no checkout beside it): the
    ``interp`` command it installs prints the version from ``interp/_version.py`` (the wheel's metadata carries the
    same one) and runs ``interp predict`` on the packaged model."""
    from interp._version import __version__

    assert wheel.name.startswith(f"interp-{__version__}-")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, text=True)
    # the dependencies come from this environment's site-packages as a plain path: its .pth files (the editable
    # install's finder among them) are not run, so `interp` can only be the one installed in the new environment
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    where = subprocess.run([str(py), "-c", "import interp; print(interp.__file__)"], check=True, cwd=tmp_path,
                           env=env, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    version = subprocess.run([str(venv / "bin" / "interp"), "--version"], check=True, cwd=tmp_path, env=env,
                             capture_output=True, text=True).stdout
    assert version.strip() == f"interp {__version__}"
    out = subprocess.run([str(venv / "bin" / "interp"), "predict", "--prompt", "The capital of France is"],
                         check=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600).stdout
    assert "Paris" in out, out
