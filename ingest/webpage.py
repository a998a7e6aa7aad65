"""A web page's main content as Markdown. The only home of ``trafilatura``.

Menus, headers, footers, cookie banners and other boilerplate are left out by trafilatura's extraction; headings
stay Markdown headings, so the page's document is chunked by section like an uploaded Markdown file, and tables
stay tables. The page's title opens the document as its top heading when the content does not start with one.
The Markdown is what a page's version stores and hashes: a page whose main content did not change (only its
menu, a date in the footer, an ad) is the same version and re-embeds nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import trafilatura

from ingest.errors import NoExtractableText

_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


@dataclass(frozen=True)
class ExtractedPage:
    title: str
    markdown: str  # the whole document: title heading, then the main content


def extract_page(html: str, url: str) -> ExtractedPage:
    """The main content of ``html`` (fetched from ``url``) as Markdown; raises ``NoExtractableText`` when the page
    has none (an empty page, a page that is all navigation)."""
    doc = trafilatura.extract_with_metadata(
        html, url=url, output_format="markdown", include_tables=True, include_formatting=True,
        include_links=False, include_images=False, include_comments=False, favor_recall=True,
    )
    body = _FRONT_MATTER.sub("", doc.text or "", count=1).strip() if doc is not None else ""
    if not body:
        raise NoExtractableText(f"no main content could be extracted from {url}")
    title = " ".join((doc.title or "").split()) if doc is not None else ""
    if title and not body.startswith("#"):
        body = f"# {title}\n\n{body}"
    return ExtractedPage(title=title, markdown=body + "\n")
