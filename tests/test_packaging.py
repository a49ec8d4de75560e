"""The package installs next to a user's stack: pyproject.toml declares ranges (Pillow alone exact), and
constraints.txt, the exact set `make` and CI install, lies inside them.

The resolution test runs pip's own resolver (`pip install --dry-run`) offline, on stand-in wheels made in the
test that carry only metadata: vl2prep's with the requirements pyproject.toml declares, and every
dependency at its tested version and at the neighbouring releases a training environment may hold. So it
proves what pip decides for these declarations without a network or gigabytes of real wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUNTIME = [Requirement(text) for text in PROJECT["dependencies"]]
EXTRAS = {
    name: [Requirement(text) for text in texts] for name, texts in PROJECT["optional-dependencies"].items()
}


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def test_runtime_dependencies_are_ranges_except_pillow():
    for requirement in RUNTIME:
        operators = {spec.operator for spec in requirement.specifier}
        if requirement.name == "pillow":
            assert str(requirement.specifier) == "==13.0.0"
        else:
            assert operators == {">=", "<"}, requirement
    assert PROJECT["requires-python"] == ">=3.11"


def test_constraints_pin_every_declared_dependency_inside_its_range():
    pins = constraints()
    for requirement in [*RUNTIME, *(r for extra in EXTRAS.values() for r in extra)]:
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    assert pins["torch"] == Version("2.13.0")  # what the project's own venv is built and tested with
    assert pins["ray"] == Version("2.60.0") and pins["moto"] == Version("5.2.6")
    extras = {canonicalize_name(r.name): r.extras for r in EXTRAS["test"]}
    assert extras["ray"] == {"default"} and extras["moto"] == {"server"}


# ------------------------------------------------------------------------------------------------
# pip's resolver on stand-in wheels

NEIGHBOURS = {
    "torch": ["2.12.1", "2.14.0", "2.15.0", "3.0.0"],
    "numpy": ["1.26.4", "2.3.5", "2.5.0", "3.0.0"],
    "pillow": ["12.3.0", "13.1.0"],
    "ray": ["2.59.0", "2.61.0", "3.0.0"],
    "pyarrow": ["25.0.0", "27.0.0"],
    "triton": ["3.8.0"],
}
"""Releases beside the tested ones that a training environment may already hold."""


def stand_in_wheel(folder: Path, name: str, version: str, requires: list[str] = (), extras=()) -> None:
    """A wheel holding only metadata: all pip's resolver reads."""
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Provides-Extra: {extra}" for extra in extras),
        *(f"Requires-Dist: {requirement}" for requirement in requires),
    ]
    wheel = ["Wheel-Version: 1.0", "Generator: vl2prep-tests", "Root-Is-Purelib: true", "Tag: py3-none-any"]
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(metadata) + "\n")
        archive.writestr(f"{dist}.dist-info/WHEEL", "\n".join(wheel) + "\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    stand_in_wheel(folder, "vl2prep", PROJECT["version"], PROJECT["dependencies"])
    pins = constraints()
    extras: dict[str, set[str]] = {}
    for requirement in RUNTIME:
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    for name, names in extras.items():
        for version in {str(pins[name]), *NEIGHBOURS.get(name, [])}:
            stand_in_wheel(folder, name, version, extras=sorted(names))
    return folder


def resolve(wheels: Path, tmp_path: Path, *requirements: str) -> subprocess.CompletedProcess:
    """`pip install --dry-run` of vl2prep beside `requirements`, from the stand-in wheels only: no index, no
    configuration files, no installed package considered."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
         "--find-links", str(wheels), "--report", str(tmp_path / "report.json"), "--quiet",
         "vl2prep", *requirements],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def chosen(tmp_path: Path) -> dict[str, str]:
    report = json.loads((tmp_path / "report.json").read_text())
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "stack",
    [
        ["torch==2.14.0"],
        ["torch==2.15.0", "numpy==2.5.0", "ray==2.61.0", "triton==3.8.0"],
        [],  # alone: the newest releases inside the ranges
    ],
)
def test_the_package_resolves_next_to_another_stack(wheels, tmp_path, stack):
    result = resolve(wheels, tmp_path, *stack)
    assert result.returncode == 0, result.stderr
    versions = chosen(tmp_path)
    for requirement in map(Requirement, stack):
        assert requirement.specifier.contains(versions[requirement.name]), versions
    assert versions["vl2prep"] == PROJECT["version"] and versions["pillow"] == "13.0.0"
    if not stack:
        assert versions["torch"] == "2.15.0" and versions["numpy"] == "2.5.0", versions


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "stack",
    [["torch==3.0.0"], ["torch==2.12.1"], ["numpy==1.26.4"], ["pillow==12.3.0"], ["pyarrow==27.0.0"]],
)
def test_a_stack_outside_the_tested_ranges_is_refused(wheels, tmp_path, stack):
    """pip refuses, rather than install an untested torch or replace the environment's: the bounds hold."""
    result = resolve(wheels, tmp_path, *stack)
    assert result.returncode != 0
    assert "ResolutionImpossible" in result.stderr or "conflict" in result.stderr, result.stderr
