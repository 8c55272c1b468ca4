"""The package a user installs: a wheel built from the tree holds every file of keras_lct and imports.

keras-lct is installed from a clone or from a wheel built from it (README "Install"). A test that
imports `keras_lct` from the source tree cannot see a file the wheel leaves out (a subpackage
without `__init__.py`, a data file the build does not list): this one builds the wheel from a copy
of the tree's packaging inputs, installs it into a fresh virtual environment and imports every
module from there, outside the tree. Nothing is downloaded: the wheel is built with this
environment's setuptools (`--no-build-isolation`) and installed without its dependencies, which the
fresh environment reads from this one's site-packages (a `.pth` line: a plain path, so this
environment's editable install of the tree does not reach it).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_lct"
# What the build reads besides the package: pyproject.toml names README.md as the long description.
PACKAGING_FILES = ("pyproject.toml", "README.md")

# Run by the fresh environment's Python: imports every module of the installed package.
IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil
import keras_lct
modules = sorted(module.name for module in pkgutil.walk_packages(keras_lct.__path__, "keras_lct."))
for name in modules:
    importlib.import_module(name)
print(json.dumps({"file": keras_lct.__file__, "version": keras_lct.__version__, "modules": modules}))
"""


def package_files(folder):
    """The files of the package under `folder`, relative to it: no caches, no hidden files."""
    found = set()
    for directory, subdirectories, files in os.walk(os.path.join(folder, PACKAGE)):
        subdirectories[:] = [name for name in subdirectories if name != "__pycache__" and not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and not name.endswith(".pyc"):
                found.add(os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/"))
    return found


def module_names(files):
    """The dotted module names of the `.py` files among `files`, packages by their folder's name."""
    names = set()
    for path in files:
        if path.endswith(".py"):
            parts = path[: -len(".py")].split("/")
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.backend_neutral
def test_a_wheel_built_from_the_tree_installs_every_module_and_imports_outside_the_tree(tmp_path):
    source = tmp_path / "source"  # built from a copy: the build writes build/ and an egg-info beside its input
    shutil.copytree(os.path.join(ROOT, PACKAGE), source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    for name in PACKAGING_FILES:
        shutil.copy(os.path.join(ROOT, name), source / name)
    expected_files = package_files(ROOT)
    assert package_files(source) == expected_files

    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(wheels), str(source)])
    [wheel] = list(wheels.iterdir())
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith(f"{PACKAGE}/")}
    missing = sorted(expected_files - in_wheel)
    assert not missing, f"the wheel {wheel.name} lacks {len(missing)} file(s) of the tree's package: {missing}"

    environment = tmp_path / "environment"
    run([sys.executable, "-m", "venv", "--without-pip", str(environment)])
    python = environment / "bin" / "python"
    site_packages = sysconfig.get_path("purelib", vars={"base": str(environment), "platbase": str(environment)})
    # This environment's packages (keras, a backend), after the fresh one's own: its keras_lct comes first.
    with open(os.path.join(site_packages, "zz_dependencies.pth"), "w") as file:
        file.write(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment_variables = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # -I: neither the current folder nor PYTHONPATH on the path, so the tree cannot stand in for the wheel.
    imported = json.loads(run([str(python), "-I", "-c", IMPORT_EVERY_MODULE], cwd=elsewhere,
                              env=environment_variables).stdout.strip().splitlines()[-1])
    assert os.path.realpath(imported["file"]).startswith(os.path.realpath(site_packages) + os.sep), imported["file"]
    assert set(imported["modules"]) == module_names(expected_files) - {PACKAGE}
    assert wheel.name == f"{PACKAGE}-{imported['version']}-py3-none-any.whl"
