"""docs/configuration.md against the configuration model: same keys, same defaults.

The reference documents each key as a table row whose first cell is the key path in
backticks (`tenants[].credential.client_secret_file`), and lists the keys that need a restart
under "Keys that need a restart", one bullet each, which must be ``RESTART_KEYS``. The model's
key paths come from walking the pydantic models from ``Config`` down; fields that exist only to
reject inline secrets (``exclude=True``) are not keys an operator may set.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemon.config import RESTART_KEYS, Config, parse_duration

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\|\s*`(?P<key>[a-z_][a-z0-9_\[\].]*)`\s*\|(?P<cells>.*)\|\s*$")


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model inside an annotation (Optional, Annotated, tuple[...]), and if it is a list."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested_model(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
        return None
    if origin in (tuple, list):
        inner = _nested_model(typing.get_args(annotation)[0])
        return (inner[0], True) if inner is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key path an operator may write, with its field."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # a trap for inline secrets, rejected whatever its value
        path = f"{prefix}{name}"
        yield path, field
        nested = _nested_model(field.annotation)
        if nested is not None:
            inner, is_list = nested
            yield from model_keys(inner, f"{path}[]." if is_list else f"{path}.")


def documented_rows() -> dict[str, list[str]]:
    """Key path -> the other cells of its row (type, default, meaning)."""
    rows: dict[str, list[str]] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        key = match.group("key")
        assert key not in rows, f"{key} is documented twice"
        rows[key] = [cell.strip() for cell in match.group("cells").split(" | ")]
    return rows


MODEL = dict(model_keys(Config))
DOCUMENTED = documented_rows()


def test_walk_finds_the_nested_keys() -> None:
    """Guards the walk itself: a walk that found nothing would make the next tests vacuous."""
    assert "tenants[].credential.certificate.private_key_file" in MODEL
    assert "mailboxes[].backfill_days" in MODEL
    assert "tenants[].client_secret" not in MODEL
    assert len(MODEL) > 40


def test_every_model_key_is_documented() -> None:
    missing = sorted(set(MODEL) - set(DOCUMENTED))
    assert not missing, f"keys of the config model missing from {REFERENCE.name}: {missing}"


def test_every_documented_key_exists_in_the_model() -> None:
    unknown = sorted(set(DOCUMENTED) - set(MODEL))
    assert not unknown, f"keys in {REFERENCE.name} that the config model does not have: {unknown}"


def _expected_default(field: FieldInfo) -> str | None:
    """The default as the reference writes it; None where only a description fits."""
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "null"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return "[" + ", ".join(str(item) for item in default) + "]"
    if isinstance(default, BaseModel | SecretStr):
        return None
    return str(default)


@pytest.mark.parametrize("key", sorted(MODEL))
def test_documented_default_matches_the_model(key: str) -> None:
    if key not in DOCUMENTED:
        pytest.skip("reported by test_every_model_key_is_documented")
    field = MODEL[key]
    _type, default_cell, meaning = DOCUMENTED[key]
    assert meaning, f"{key}: no meaning"
    if field.is_required():
        assert default_cell == "required", f"{key} is required in the model"
        return
    assert default_cell != "required", f"{key} has a default in the model"
    assert field.default is not PydanticUndefined or field.default_factory is not None
    expected = _expected_default(field)
    if expected is None:
        assert default_cell == "(section)", f"{key}: a section's default is written (section)"
        return
    written = re.fullmatch(r"`([^`]*)`", default_cell)
    assert written is not None, f"{key}: default {default_cell!r} is not one `value`"
    value = written.group(1)
    if isinstance(field.default, float):  # durations: 60.0 is written 60s, 900.0 as 15m
        assert parse_duration(value) == field.default, f"{key}: {value} != {field.default}s"
    else:
        assert value == expected, f"{key}: documented {value!r}, model {expected!r}"


def _bullets_under(heading: str) -> list[str]:
    """The backticked first word of each top-level bullet in the section *heading*."""
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading) + 1
    keys: list[str] = []
    for line in lines[start:]:
        if line.startswith("#"):
            break
        match = re.match(r"- `([^`]+)`", line)
        if match is not None:
            keys.append(match.group(1))
    return keys


def test_the_keys_that_need_a_restart_are_documented() -> None:
    assert _bullets_under("### Keys that need a restart") == list(RESTART_KEYS)


@pytest.mark.parametrize("key", RESTART_KEYS)
def test_each_restart_key_says_so_in_its_row(key: str) -> None:
    rows = [k for k in DOCUMENTED if k == key or k.startswith(f"{key}.")]
    assert rows, f"{key} has no row"
    for row in rows:
        assert "needs a restart" in DOCUMENTED[row][-1], f"{row}: the row does not say so"
