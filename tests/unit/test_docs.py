"""The operator docs: links that resolve, and facts that follow the code they describe.

Facts about Microsoft are checked against Microsoft Learn by hand (each is cited where it is
written); what can drift from this repository is checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.backoff import auth_retry_delay
from support.markdown import github_anchors

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_a_heading_that_exist(page: Path) -> None:
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (
            anchor
            and file.suffix == ".md"
            and anchor not in github_anchors(file.read_text(encoding="utf-8"))
        ):
            broken.append(target)
    assert broken == [], f"{page.name}: links without a target"


class _Edge:
    """Jitter that always draws the lower (or the upper) end of its range."""

    def __init__(self, upper: bool) -> None:
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g}"


def test_the_documented_auth_failed_retry_range_is_the_one_of_backoff_py() -> None:
    lowest = _minutes(auth_retry_delay(1.0, _Edge(upper=False)))
    highest = _minutes(auth_retry_delay(86400.0, _Edge(upper=True)))
    default_low = _minutes(auth_retry_delay(60.0, _Edge(upper=False)))
    default_high = _minutes(auth_retry_delay(60.0, _Edge(upper=True)))
    assert (lowest, highest, default_low, default_high) == ("4", "60", "8", "10")

    for page in ("operations.md", "troubleshooting.md"):
        text = " ".join((DOCS / page).read_text(encoding="utf-8").split())
        assert f"every {lowest} to {highest} minutes" in text, page
        assert f"{default_low} to {default_high} minutes at the default 60 s interval" in text, page


@pytest.mark.parametrize(
    ("page", "wrong"),
    [
        # -Organization is for app-only connections; an administrator uses -UserPrincipalName
        ("setup.md", "Connect-ExchangeOnline -Organization"),
        # a Cloud Application Administrator can consent to IMAP.AccessAsApp (not a Graph app role)
        ("setup.md", "(Global Administrator or Privileged Role Administrator)"),
        # the portal's path is Entra ID > App registrations
        ("setup.md", "Identity > Applications > **App registrations**"),
        # Entra ID's default token lifetime is a random 60 to 90 minutes, not an hour
        ("operations.md", "hour-long token"),
        ("troubleshooting.md", "about 20 minutes goes unnoticed"),
        # Command Argument Error is about arguments Exchange does not accept, not their length
        ("troubleshooting.md", "points at over-long commands"),
        # throttling comes as NO too, not only as BAD
        ("troubleshooting.md", "## Throttling: `BAD Request"),
        # no advice to add replicas (a second replica polls every mailbox again)
        ("operations.md", "or add replicas"),
        ("troubleshooting.md", "split the mailboxes"),
    ],
)
def test_a_corrected_statement_does_not_come_back(page: str, wrong: str) -> None:
    text = " ".join((DOCS / page).read_text(encoding="utf-8").split())
    assert " ".join(wrong.split()) not in text


@pytest.mark.parametrize(
    "needed",
    [
        "Connect-ExchangeOnline -UserPrincipalName",
        "Cloud Application Administrator",
        "**Entra ID** > **App registrations**",
        "login.microsoftonline.us",
        "outlook.office365.us",
        "login.partner.microsoftonline.cn",
        "partner.outlook.cn",
        "/adminconsent?client_id=",
        "Set-CASMailbox -Identity <mailbox> -ImapEnabled $true",
        "PrimarySmtpAddress",
        "CREATE DATABASE mailsyncd OWNER mailsyncd",
        "DATABASE_URL",
        "mailsyncd migrate -c",
        "kubectl -n mailsyncd exec deploy/mailsyncd -- mailsyncd check",
    ],
)
def test_setup_covers_the_steps_an_operator_needs(needed: str) -> None:
    assert needed in " ".join((DOCS / "setup.md").read_text(encoding="utf-8").split())
