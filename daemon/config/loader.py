"""Reading the YAML file and turning every validation problem into one ConfigError."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import (
    ValidationError,
)
from pydantic_core import ErrorDetails

try:  # the C parser is much faster on a file that lists 10,000 mailboxes
    from yaml import CSafeLoader as _YamlBase
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _YamlBase  # type: ignore[assignment]

from daemon.config.fields import (
    CONFIG_ENV_VAR,
    FILE_PATH,
    ConfigError,
    ConfigIssue,
    _LoadContext,
)
from daemon.config.model import (
    Config,
)

# -- loading -----------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    check_secrets: bool = True,
) -> Config:
    """Load and validate the file *path* (None: ``$MAILSYNCD_CONFIG``); raise ConfigError.

    Relative file paths in the configuration are relative to the file's directory. With
    ``check_secrets=False`` missing secret files and variables are left for the caller to
    diagnose (``mailsyncd check`` reports them as failed steps).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV_VAR) or None
        if path is None:
            raise ConfigError(
                [ConfigIssue(FILE_PATH, f"no configuration file: use -c FILE or {CONFIG_ENV_VAR}")]
            )
    file = Path(path)
    data = _read_yaml(file)
    return config_from_mapping(
        data, environ=env, base_dir=file.absolute().parent, check_secrets=check_secrets
    )


def config_from_mapping(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_secrets: bool = True,
) -> Config:
    """Validate already parsed YAML *data*; raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        message = "the file is empty" if data is None else "the top level must be a mapping"
        raise ConfigError([ConfigIssue(FILE_PATH, message)])
    load = _LoadContext(
        environ=os.environ if environ is None else environ,
        base_dir=Path.cwd() if base_dir is None else Path(base_dir),
        check_secrets=check_secrets,
    )
    issues: list[ConfigIssue] = []
    config: Config | None = None
    try:
        config = Config.model_validate(dict(data), context={"load": load})
    except ValidationError as exc:
        # converted here and raised below, outside this block: the pydantic error holds the
        # input values (an inline secret among them) and must not ride along as __context__
        issues.extend(_issue(error) for error in exc.errors(include_input=False))
    issues.extend(_cross_check(data))
    if issues or config is None:
        raise ConfigError(_ordered(issues))
    return config


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
}


def _issue(error: ErrorDetails) -> ConfigIssue:
    kind = error["type"]
    if kind in ("value_error", "assertion_error"):
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = _MESSAGES.get(kind, error["msg"].replace("Input should be", "must be", 1))
    return ConfigIssue(_path(error["loc"]), message)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _cross_check(data: Mapping[Any, Any]) -> list[ConfigIssue]:
    """Rules across entries, checked on the raw data so they run even when entries are bad."""
    issues: list[ConfigIssue] = []
    tenants = data.get("tenants")
    known: dict[str, int] = {}
    for i, tenant in enumerate(tenants if isinstance(tenants, list) else []):
        name = tenant.get("name") if isinstance(tenant, dict) else None
        if isinstance(name, str):
            if name in known:
                issues.append(
                    ConfigIssue(
                        f"tenants[{i}].name",
                        f"duplicate tenant name {name!r} (first at tenants[{known[name]}])",
                    )
                )
            known.setdefault(name, i)
    mailboxes = data.get("mailboxes")
    seen: dict[str, int] = {}
    for i, mailbox in enumerate(mailboxes if isinstance(mailboxes, list) else []):
        if not isinstance(mailbox, dict):
            continue
        address = mailbox.get("address")
        if isinstance(address, str):
            address = address.strip().lower()
            if address in seen:
                issues.append(
                    ConfigIssue(
                        f"mailboxes[{i}].address",
                        f"duplicate of mailboxes[{seen[address]}].address ({address})",
                    )
                )
            seen.setdefault(address, i)
        tenant_name = mailbox.get("tenant")
        if isinstance(tenant_name, str) and isinstance(tenants, list) and tenant_name not in known:
            names = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
            issues.append(
                ConfigIssue(
                    f"mailboxes[{i}].tenant",
                    f"unknown tenant {tenant_name[:64]!r} (tenants: {names or 'none'})",
                )
            )
    return issues


_FIRST_STEP = re.compile(r"([^.\[]*)(?:\[(\d+)\])?")


def _ordered(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Unique issues in file order: by section, then entry; stable within an entry."""
    order = [FILE_PATH, *Config.model_fields]

    def key(issue: ConfigIssue) -> tuple[int, int]:
        match = _FIRST_STEP.match(issue.path)
        name, index = (match.group(1), match.group(2)) if match else ("", None)
        rank = order.index(name) if name in order else len(order)
        return rank, -1 if index is None else int(index)

    return sorted(dict.fromkeys(issues), key=key)


class _YamlLoader(_YamlBase):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value[:64]!r}", key_node.start_mark
                    )
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(file: Path) -> object:
    def fail(message: str) -> NoReturn:
        raise ConfigError([ConfigIssue(FILE_PATH, message)])

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"configuration file {str(file)!r} does not exist")
    except IsADirectoryError:
        fail(f"configuration file {str(file)!r} is a directory")
    except UnicodeDecodeError:
        fail(f"configuration file {str(file)!r} is not UTF-8 text")
    except OSError as exc:
        fail(f"cannot read configuration file {str(file)!r}: {exc.strerror}")
    loader = _YamlLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # only the problem and its position: str(exc) quotes the line, which may hold a secret
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fail(f"invalid YAML at {where}{exc.problem or exc.context or 'syntax error'}")
    except yaml.YAMLError:
        fail("invalid YAML")
    finally:
        loader.dispose()
