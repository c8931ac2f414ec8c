"""Reading the YAML file and turning every validation problem into one ConfigError."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
from daemon.config.sources import (
    ConfigSources,
    FileStamp,
    MailboxFile,
    SourceStamp,
    expand,
    file_stamp,
)

# -- loading -----------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    check_secrets: bool = True,
) -> Config:
    """Load and validate the file *path* (None: ``$MAILSYNCD_CONFIG``); raise ConfigError.

    Relative file paths in the configuration, ``mailboxes_files`` patterns among them, are
    relative to the file's directory. With ``check_secrets=False`` missing secret files and
    variables are left for the caller to diagnose (``mailsyncd check`` reports them as failed
    steps). ``Config.sources`` (or ``ConfigError.sources``) names every file read.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV_VAR) or None
        if path is None:
            raise ConfigError(
                [ConfigIssue(FILE_PATH, f"no configuration file: use -c FILE or {CONFIG_ENV_VAR}")]
            )
    file = Path(path).absolute()  # links are kept: a ConfigMap swaps the target of a link
    stamp = ((str(file), file_stamp(file)),)
    data, problem = _parse_yaml(file)
    if problem is not None:
        if not problem.startswith(_INVALID_YAML):
            problem = f"configuration file {str(Path(path))!r} {problem}"
        sources = ConfigSources(config_file=file, base_dir=file.parent, stamp=stamp)
        raise ConfigError([ConfigIssue(FILE_PATH, problem)], sources=sources)
    return _validate(
        data,
        _LoadContext(environ=env, base_dir=file.parent, check_secrets=check_secrets),
        config_file=file,
        stamp=stamp,
    )


def config_from_mapping(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    check_secrets: bool = True,
) -> Config:
    """Validate already parsed YAML *data*; raise ConfigError listing every problem.

    ``mailboxes_files`` patterns are relative to *base_dir* (default: the current directory).
    """
    load = _LoadContext(
        environ=os.environ if environ is None else environ,
        base_dir=Path.cwd() if base_dir is None else Path(base_dir).absolute(),
        check_secrets=check_secrets,
    )
    return _validate(data, load, config_file=None, stamp=())


def _validate(
    data: object, load: _LoadContext, *, config_file: Path | None, stamp: SourceStamp
) -> Config:
    if not isinstance(data, Mapping):
        message = "the file is empty" if data is None else "the top level must be a mapping"
        sources = ConfigSources(config_file=config_file, base_dir=load.base_dir, stamp=stamp)
        raise ConfigError([ConfigIssue(FILE_PATH, message)], sources=sources)
    data = dict(data)
    lists = _MailboxLists(data, load.base_dir, config_file)
    sources = ConfigSources(
        config_file=config_file,
        base_dir=load.base_dir,
        patterns=lists.patterns,
        mailbox_files=tuple(lists.files),
        stamp=stamp + tuple(lists.stamp),
    )
    issues: list[ConfigIssue] = list(lists.issues)
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={"load": load, "sources": sources})
    except ValidationError as exc:
        # converted here and raised below, outside this block: the pydantic error holds the
        # input values (an inline secret among them) and must not ride along as __context__
        issues.extend(_issue(error) for error in exc.errors(include_input=False))
    issues.extend(_cross_check(data, sources.mailbox_key_path))
    if issues or config is None:
        raise ConfigError(_ordered(issues, lists, sources), sources=sources)
    return config


class _MailboxLists:
    """Reads the files ``mailboxes_files`` names and appends their entries to ``mailboxes``.

    Problems with a pattern or a file are ``issues``, each with its sort position in
    ``positions``; entries are then validated with the rest, as ``mailboxes[N]``, and their
    key paths rewritten to ``mailboxes_files[k]: file[i]`` when reported.
    """

    def __init__(self, data: dict[str, Any], base_dir: Path, config_file: Path | None) -> None:
        self.issues: list[ConfigIssue] = []
        self.positions: dict[ConfigIssue, tuple[int, int, int]] = {}
        self.pattern_starts: list[int] = []
        self.files: list[MailboxFile] = []
        self.stamp: list[tuple[str, FileStamp]] = []
        raw = data.get("mailboxes_files")
        patterns = raw if isinstance(raw, list) else []
        self.patterns = tuple(p for p in patterns if _usable_pattern(p))
        if not self.patterns:
            return  # nothing to add: ``mailboxes`` is validated exactly as written
        inline = data.get("mailboxes")
        if inline is None:
            inline = []
        elif not isinstance(inline, list):
            self._problem("mailboxes", "must be a list", 0, -1)
            inline = []
        entries: list[object] = list(inline)
        config_id = None if config_file is None else _identity(file_stamp(config_file))
        read_by: dict[tuple[int, int], str] = {}  # (device, inode) -> the first key path
        for k, pattern in enumerate(patterns):
            self.pattern_starts.append(len(entries))
            if not _usable_pattern(pattern):
                continue  # reported by the model: must be a string, not empty
            matches = expand(pattern, base_dir)
            if not matches:
                self._problem(
                    f"mailboxes_files[{k}]",
                    f"no file matches {pattern[:200]!r} (relative paths start at {base_dir})",
                    len(entries),
                    k,
                )
            for shown, path in matches:
                stamp = file_stamp(path)
                self.stamp.append((str(path), stamp))
                found = MailboxFile(k, shown, path, start=len(entries), count=0)
                ident = _identity(stamp)
                if ident is not None and ident == config_id:
                    problem: str | None = "is the configuration file itself, not a mailbox list"
                elif ident is not None and ident in read_by:
                    problem = f"is already read through {read_by[ident]}; list each file once"
                else:
                    if ident is not None:
                        read_by[ident] = found.key_path
                    added, problem = _mailbox_entries(path)
                    entries.extend(added)
                    found = MailboxFile(k, shown, path, start=found.start, count=len(added))
                if problem is not None:
                    self._problem(found.key_path, problem, found.start, k)
                self.files.append(found)
        data["mailboxes"] = entries

    def _problem(self, path: str, message: str, before_entry: int, pattern: int) -> None:
        issue = ConfigIssue(path, message)
        self.issues.append(issue)
        self.positions[issue] = (before_entry, -1, pattern)


def _usable_pattern(pattern: object) -> bool:
    return isinstance(pattern, str) and bool(pattern.strip())


def _identity(stamp: FileStamp) -> tuple[int, int] | None:
    return None if stamp is None else (stamp[0], stamp[1])


def _mailbox_entries(path: Path) -> tuple[list[object], str | None]:
    """The entries of one mailbox file, or a problem with the file as a whole."""
    document, problem = _parse_yaml(path)
    if problem is not None:
        return [], problem
    if isinstance(document, list):
        return document, None
    if document is None:
        return [], "the file is empty (write [] for a file that lists no mailbox)"
    hint = ""
    if isinstance(document, Mapping) and "mailboxes" in document:
        hint = ": write the entries at the top level, without `mailboxes:`"
    return [], f"must be a YAML list of mailbox entries{hint}"


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


def _cross_check(data: Mapping[Any, Any], key_path: Callable[[int], str]) -> list[ConfigIssue]:
    """Rules across entries, checked on the raw data so they run even when entries are bad.

    Issues name mailboxes as ``mailboxes[N]`` (N counting the entries read from files too);
    messages name other entries with *key_path*.
    """
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
    names = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
    mailboxes = data.get("mailboxes")
    seen: dict[str, int] = {}
    for i, mailbox in enumerate(mailboxes if isinstance(mailboxes, list) else []):
        if not isinstance(mailbox, dict):
            continue
        address = mailbox.get("address")
        if isinstance(address, str):
            address = address.strip().lower()
            first = seen.setdefault(address, i)
            if first != i:
                issues.append(
                    ConfigIssue(
                        f"mailboxes[{i}].address",
                        f"duplicate of {key_path(first)}.address ({address[:254]})",
                    )
                )
        tenant_name = mailbox.get("tenant")
        if isinstance(tenant_name, str) and isinstance(tenants, list) and tenant_name not in known:
            issues.append(
                ConfigIssue(
                    f"mailboxes[{i}].tenant",
                    f"unknown tenant {tenant_name[:64]!r} (tenants: {names or 'none'})",
                )
            )
    return issues


_FIRST_STEP = re.compile(r"([^.\[:]*)(?:\[(\d+)\])?")
_MAILBOX_ENTRY = re.compile(r"mailboxes\[(\d+)\]")


def _ordered(
    issues: list[ConfigIssue], lists: _MailboxLists, sources: ConfigSources
) -> list[ConfigIssue]:
    """Unique issues in file order: by section, then entry; stable within an entry.

    Entries read from mailbox files follow those of ``mailboxes``, each file's own problems
    (unreadable, not a list) just before its entries; their key paths are rewritten last.
    """
    order = [FILE_PATH, *Config.model_fields]
    mailboxes = order.index("mailboxes")

    def key(issue: ConfigIssue) -> tuple[int, int, int, int]:
        if issue in lists.positions:
            return (mailboxes, *lists.positions[issue])
        match = _FIRST_STEP.match(issue.path)
        name, index = (match.group(1), match.group(2)) if match else ("", None)
        if name == "mailboxes_files" and lists.pattern_starts:
            k = -1 if index is None else int(index)
            starts = lists.pattern_starts
            return mailboxes, starts[k] if 0 <= k < len(starts) else 0, -1, k
        rank = order.index(name) if name in order else len(order)
        return rank, -1 if index is None else int(index), 0, 0

    def rewritten(issue: ConfigIssue) -> ConfigIssue:
        match = _MAILBOX_ENTRY.match(issue.path)
        if match is None or not sources.mailbox_files:
            return issue
        path = sources.mailbox_key_path(int(match.group(1))) + issue.path[match.end() :]
        return ConfigIssue(path, issue.message)

    return [rewritten(issue) for issue in sorted(dict.fromkeys(issues), key=key)]


_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _NotPlain(Exception):
    """The document uses something the fast path leaves to PyYAML (an alias, a merge key...)."""


class _YamlLoader(_YamlBase):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last).

    libyaml parses, but PyYAML resolves and constructs every node in Python, which made a file
    of 10,000 mailboxes slow. So the implicit tag of a plain scalar is looked up once per
    distinct text, and a document made only of mappings, lists and scalars (no alias, merge
    key or explicit collection tag) is built in one plain walk; any other document is built
    by SafeLoader's own constructor. Both paths give what SafeLoader gives.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0] and not self.yaml_path_resolvers:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
            return tag
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return self._plain(node, set())
        except _NotPlain:
            self.constructed_objects = {}
            return super().construct_document(node)

    def _plain(self, node: yaml.Node, seen: set[int]) -> Any:
        kind = type(node)
        if kind is yaml.ScalarNode:
            return node.value if node.tag == _STR_TAG else self.construct_object(node)
        if id(node) in seen:
            raise _NotPlain  # an alias: shared (maybe recursive) data is SafeLoader's to build
        seen.add(id(node))
        if kind is yaml.SequenceNode and node.tag == _SEQ_TAG:
            return [self._plain(child, seen) for child in node.value]
        if kind is not yaml.MappingNode or node.tag != _MAP_TAG:
            raise _NotPlain
        mapping: dict[Any, Any] = {}
        keys: set[tuple[str, str]] = set()
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode or key_node.tag == _MERGE_TAG:
                raise _NotPlain
            _unique_key(key_node, keys)
            mapping[self._plain(key_node, seen)] = self._plain(value_node, seen)
        return mapping

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                _unique_key(key_node, keys)
        return super().construct_mapping(node, deep=deep)


def _unique_key(node: yaml.ScalarNode, seen: set[tuple[str, str]]) -> None:
    ident = (node.tag, node.value)
    if ident in seen:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate key {node.value[:64]!r}", node.start_mark
        )
    seen.add(ident)


_INVALID_YAML = "invalid YAML"


def _parse_yaml(file: Path) -> tuple[object, str | None]:
    """The document in *file*, or what is wrong with the file (worded to follow its name)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "does not exist"
    except IsADirectoryError:
        return None, "is a directory"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror}"
    loader = _YamlLoader(text)
    try:
        return loader.get_single_data(), None
    except yaml.MarkedYAMLError as exc:
        # only the problem and its position: str(exc) quotes the line, which may hold a secret
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, f"{_INVALID_YAML} at {where}{exc.problem or exc.context or 'syntax error'}"
    except yaml.YAMLError:
        return None, _INVALID_YAML
    except RecursionError:
        return None, f"{_INVALID_YAML}: nested too deeply"
    finally:
        loader.dispose()
