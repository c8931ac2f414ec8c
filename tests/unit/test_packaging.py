"""Packaging: what the distribution publishes, and lock files that match pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
MAKEFILE = ROOT / "Makefile"
LOCKS = ("requirements.lock", "requirements-dev.lock")


def _pyproject() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())


def _lock_inputs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_inputs", ROOT / ".ci" / "lock_inputs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uv_version() -> str:
    match = re.search(r"^UV_VERSION := (\S+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, "the Makefile pins the uv of `make lock`"
    return match[1]


def test_dev_tools_are_a_dependency_group_not_a_published_extra() -> None:
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    assert "dev" not in project.get("optional-dependencies", {})
    groups = data["dependency-groups"]
    assert isinstance(groups, dict)
    tools = {Requirement(r).name for r in groups["dev"]}
    assert {"pytest", "ruff", "mypy", "hatchling", "editables"} <= tools
    # What an installed distribution says about itself (make venv installs it editable).
    metadata = importlib.metadata.metadata("mailsyncd")
    assert "dev" not in (metadata.get_all("Provides-Extra") or [])


def test_license_is_a_pep_639_expression_that_the_build_backend_writes() -> None:
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    assert project["license"] == "Apache-2.0"
    build = data["build-system"]
    assert isinstance(build, dict)
    (backend,) = [Requirement(r) for r in build["requires"]]
    # hatchling writes License-Expression from 1.27 on; the floor must say so, and the
    # hatchling that `make venv` installs for --no-build-isolation must meet it.
    assert backend.name == "hatchling"
    assert backend.specifier.contains("1.27")
    assert not backend.specifier.contains("1.26.3")
    assert Version(importlib.metadata.version("hatchling")) in backend.specifier
    assert importlib.metadata.metadata("mailsyncd")["License-Expression"] == "Apache-2.0"


def test_make_lock_pins_its_uv_and_compiles_the_dev_group() -> None:
    text = MAKEFILE.read_text()
    recipe = text.split("\nlock:\n", 1)[1].split("\n\n", 1)[0]
    assert "uv==$(UV_VERSION)" in recipe
    assert "--group dev" in recipe
    assert "--extra dev" not in recipe
    assert "lock_inputs.py stamp --uv $(UV_VERSION)" in recipe
    assert re.fullmatch(r"\d+\.\d+\.\d+", _uv_version())
    test_prerequisites = re.search(r"^test: (.*)$", text, re.MULTILINE)
    assert test_prerequisites
    assert "lock-check" in test_prerequisites[1].split(), "CI (make test) checks the locks"


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_files_match_pyproject_and_the_pinned_uv(lock: str) -> None:
    lock_inputs = _lock_inputs()
    problems = lock_inputs.problems(
        PYPROJECT.read_text(), (ROOT / lock).read_text(), lock, _uv_version()
    )
    assert problems == []


def test_lock_check_fails_when_pyproject_dependencies_change_and_passes_after_a_stamp(
    tmp_path: Path,
) -> None:
    lock_inputs = _lock_inputs()
    uv = _uv_version()
    pyproject = PYPROJECT.read_text()
    lock = (ROOT / "requirements-dev.lock").read_text()
    assert (
        lock_inputs.main(["check", "--uv", uv, "--pyproject", str(PYPROJECT), str(ROOT / LOCKS[0])])
        == 0
    )

    added = pyproject.replace("dependencies = [\n", 'dependencies = [\n    "httpx>=0.27",\n', 1)
    assert added != pyproject
    (problem,) = lock_inputs.problems(added, lock, "requirements-dev.lock", uv)
    assert "does not match the dependencies in pyproject.toml: run `make lock`" in problem
    tool = pyproject.replace('"ruff>=', '"ruff>=0.7,<1", "ruff>=', 1)
    assert lock_inputs.problems(tool, lock, "requirements-dev.lock", uv)
    (other_uv,) = lock_inputs.problems(pyproject, lock, "requirements-dev.lock", "0.1.0")
    assert "the Makefile pins uv 0.1.0" in other_uv
    # Comments, the ruff settings or the version of the project are not inputs of a lock.
    unrelated = pyproject.replace("line-length = 100", "line-length = 99")
    assert lock_inputs.problems(unrelated, lock, "requirements-dev.lock", uv) == []

    # `make lock` ends with a stamp: the command line round-trips on copies.
    (tmp_path / "pyproject.toml").write_text(added)
    copy = tmp_path / "requirements-dev.lock"
    copy.write_text(lock)
    argv = ["--uv", uv, "--pyproject", str(tmp_path / "pyproject.toml"), str(copy)]
    assert lock_inputs.main(["check", *argv]) == 1
    assert lock_inputs.main(["stamp", *argv]) == 0
    assert lock_inputs.main(["check", *argv]) == 0
    assert copy.read_text().count("# inputs: ") == 1
    assert copy.read_text().splitlines()[3:] == lock.splitlines()[3:], "only the header changed"


def test_a_lock_without_the_inputs_line_is_rejected() -> None:
    lock_inputs = _lock_inputs()
    lock = "\n".join(
        line
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if not line.startswith("# inputs: ")
    )
    (problem,) = lock_inputs.problems(PYPROJECT.read_text(), lock, "requirements.lock", "0.13.9")
    assert "no `# inputs: ` line: run `make lock`" in problem
