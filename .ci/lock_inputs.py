"""Tie the lock files to the pyproject.toml they were compiled from, offline.

``make lock`` compiles requirements.lock and requirements-dev.lock with a pinned uv, then
``stamp`` writes one header line into each::

    # inputs: sha256=<digest> uv=<version>

The digest covers what the resolution depends on: ``requires-python``, the project's
dependencies and optional dependencies, and the ``[dependency-groups]``. ``check`` (run by
``make test``, hence by CI) recomputes it and fails when pyproject.toml changed since the
lock was made, or when the lock was made with another uv than the Makefile pins. It needs
neither the network nor uv: only this file and the standard library.

    python3 .ci/lock_inputs.py stamp --uv 0.13.9 requirements.lock requirements-dev.lock
    python3 .ci/lock_inputs.py check --uv 0.13.9 requirements.lock requirements-dev.lock
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

PREFIX = "# inputs: "
_HEADER = re.compile(r"^# inputs: sha256=(?P<digest>[0-9a-f]{64}) uv=(?P<uv>\S+)$")


def digest(pyproject_text: str) -> str:
    """SHA-256 of the parts of a pyproject.toml that decide what a lock contains."""
    data = tomllib.loads(pyproject_text)
    project = data.get("project", {})
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "dependency-groups": data.get("dependency-groups", {}),
    }
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def header(pyproject_text: str, uv_version: str) -> str:
    return f"{PREFIX}sha256={digest(pyproject_text)} uv={uv_version}"


def stamped(lock_text: str, line: str) -> str:
    """``lock_text`` with its inputs line replaced, or added after uv's leading comments."""
    lines = [existing for existing in lock_text.splitlines() if not existing.startswith(PREFIX)]
    position = 0
    while position < len(lines) and lines[position].startswith("#"):
        position += 1
    lines.insert(position, line)
    return "\n".join(lines) + "\n"


def problems(pyproject_text: str, lock_text: str, lock_name: str, uv_version: str) -> list[str]:
    """Why ``lock_text`` does not match ``pyproject_text`` and the pinned uv (empty: it does)."""
    found = [m for line in lock_text.splitlines() if (m := _HEADER.match(line))]
    if len(found) != 1:
        return [f"{lock_name}: no `{PREFIX}` line: run `make lock`"]
    (match,) = found
    out = []
    if match["digest"] != digest(pyproject_text):
        out.append(
            f"{lock_name} does not match the dependencies in pyproject.toml: run `make lock`"
        )
    if match["uv"] != uv_version:
        out.append(
            f"{lock_name} was compiled with uv {match['uv']}, the Makefile pins uv {uv_version}:"
            " run `make lock`"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["stamp", "check"])
    parser.add_argument("--uv", required=True, help="the uv version `make lock` uses")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("locks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    pyproject = args.pyproject.read_text(encoding="utf-8")
    if args.command == "stamp":
        line = header(pyproject, args.uv)
        for lock in args.locks:
            lock.write_text(stamped(lock.read_text(encoding="utf-8"), line), encoding="utf-8")
        return 0
    found = [
        problem
        for lock in args.locks
        for problem in problems(pyproject, lock.read_text(encoding="utf-8"), lock.name, args.uv)
    ]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
