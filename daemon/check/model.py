"""What ``mailsyncd check`` reports: steps, their order of dependence, and both renderings.

The JSON document is a contract (``docs/check-output.schema.json``, version 1): keys are never
renamed or removed within a version; new step ids and new keys in ``data`` may be added.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TextIO

Status = Literal["pass", "fail", "skip"]
DataValue = str | int | float | bool | None

JSON_VERSION: Final = 1

# Every step id, in the order a tenant's steps run (the schema lists the same ids).
STEP_IDS: Final = (
    "config",
    "database",
    "credential",
    "token",
    "token.audience",
    "token.roles",
    "token.expiry",
    "imap.dns",
    "imap.tcp",
    "imap.tls",
    "imap.login",
    "imap.examine",
)

_LABELS: Final = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check before it is placed: status, what was seen, cause and fix."""

    status: Status
    detail: str
    cause: str | None = None
    fix: str | None = None
    data: Mapping[str, DataValue] = field(default_factory=dict)

    @classmethod
    def passed(cls, detail: str, **data: DataValue) -> Finding:
        """A passed check."""
        return cls("pass", detail, data=data)

    @classmethod
    def failed(cls, detail: str, *, cause: str, fix: str, **data: DataValue) -> Finding:
        """A failed check, with its most likely cause and the fix."""
        return cls("fail", detail, cause=cause, fix=fix, data=data)


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the report: a check of one tenant, mailbox or folder."""

    id: str
    status: Status
    detail: str
    tenant: str | None = None
    mailbox: str | None = None
    folder: str | None = None
    cause: str | None = None
    fix: str | None = None
    duration_s: float = 0.0
    data: Mapping[str, DataValue] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """Who the step is about: ``tenant``, ``mailbox`` or ``mailbox [folder]``."""
        if self.folder is not None:
            return f"{self.mailbox} [{self.folder}]"
        return self.mailbox or self.tenant or ""

    def as_json(self) -> dict[str, object]:
        """The step as the schema describes it (every key present, null when not known)."""
        return {
            "id": self.id,
            "status": self.status,
            "tenant": self.tenant,
            "mailbox": self.mailbox,
            "folder": self.folder,
            "detail": self.detail,
            "cause": self.cause,
            "fix": self.fix,
            "duration_s": round(self.duration_s, 3),
            "data": dict(self.data),
        }


def json_document(steps: Iterable[Step], *, config: str | None) -> dict[str, object]:
    """The ``--json`` document: ``{"version": 1, "ok": ..., "steps": [...]}``."""
    listed = list(steps)
    counts = Counter(step.status for step in listed)
    return {
        "version": JSON_VERSION,
        "ok": counts["fail"] == 0,
        "config": config,
        "summary": {status: counts[status] for status in ("pass", "fail", "skip")},
        "steps": [step.as_json() for step in listed],
    }


def write_json(steps: Iterable[Step], out: TextIO, *, config: str | None) -> None:
    """Print the ``--json`` document."""
    json.dump(json_document(steps, config=config), out, indent=2, ensure_ascii=False)
    out.write("\n")


def format_step(step: Step) -> str:
    """The human form: one line, then ``cause:`` and ``fix:`` (indented) under a failure."""
    scope = f"{step.scope}: " if step.scope else ""
    lines = [f"{_LABELS[step.status]}  {step.id:<14} {scope}{step.detail}"]
    for label, text in (("cause", step.cause), ("fix", step.fix)):
        if text:
            first, *rest = text.splitlines()
            lines.append(f"      {label + ':':<7}{first}")
            lines.extend(f"             {line}" for line in rest)
    return "\n".join(lines)


def format_summary(steps: Iterable[Step]) -> str:
    """The last line of the human form."""
    counts = Counter(step.status for step in steps)
    verdict = "setup OK" if counts["fail"] == 0 else "setup has problems"
    return f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
