"""Markdown as GitHub renders it: the anchors of headings, and the links of a page."""

from __future__ import annotations

import re


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for the headings of ``markdown`` (and explicit ids)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):  # fences of list items are indented
            in_code = not in_code
            continue
        if in_code:
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            # Rendered text: code marks and emphasis stars go, link text stays, "_" stays.
            text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        anchors.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', line))
    return anchors
