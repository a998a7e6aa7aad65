"""Turn a model's Markdown into WhatsApp's formatting.

WhatsApp knows ``*bold*``, ``_italic_``, ``~strike~``, ```` ```monospace``` ````, ``> quote`` and ``- item``
lists; nothing else. markdown-it-py parses the Markdown (CommonMark, with GitHub's tables and strikethrough)
and the renderer here writes its syntax tree in WhatsApp's terms. Markdown that has no WhatsApp form becomes
plain lines: headings a bold line, tables one line per row or ``Header: value`` lines, links ``text (url)``,
HTML tags their WhatsApp equivalent or nothing. Blocks keep the spacing the model gave them: a blank line
between two blocks stays, none is added.

A single ``*word*`` is Markdown italic but WhatsApp bold. Text that shows no sign of Markdown (no bold,
strike, heading, link, image, table, rule or fence) is taken to be WhatsApp-formatted already and its single
stars are left alone; in Markdown text they become ``_italic_``. The function is pure.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from markdown_it import MarkdownIt
from markdown_it.common.html_blocks import block_names
from markdown_it.rules_inline import StateInline
from markdown_it.tree import SyntaxTreeNode

# WhatsApp's own multi-line monospace, ```text``` hugging its text with no fence line inside, is no Markdown:
# CommonMark would take its first line for a fence and its info string. Its line breaks are held by a
# private-use character while markdown-it reads it as one code span, and put back in the rendered text.
_WHATSAPP_MONO = re.compile(r"```(?=[^\s`])(?:(?!\n[ \t]*```)[^`]|`(?!``))+?(?<=[^\s`])```", re.DOTALL)
_MONO_NEWLINE = "\ue000"
# The input's private-use characters go: customers see them as boxes, and one would pass for that mark.
_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")

# A bare URL ends before trailing punctuation (and before a closing parenthesis it did not open).
_BARE_URL_SCHEME = re.compile(r"(?<![^\W_])https?$", re.IGNORECASE)
_BARE_URL_REST = re.compile(r"://[^\s<>\"`]+")
_URL_TRAIL = ".,;:!?*_~'\""
_SHOWN_SCHEME = re.compile(r"^(?:mailto|tel):", re.IGNORECASE)
_SAME_ADDRESS_NOISE = re.compile(r"^(?:https?://|mailto:|tel:)?(?:www\.)?", re.IGNORECASE)

# Emphasis glued to a letter or digit outside (2*3*4, __init__.py, a path's *x*/) is no WhatsApp span.
_ALNUM = re.compile(r"[^\W_]")
_GLUED_AFTER = re.compile(r"[^\W_]|[.\-/][^\W_]")

_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)")
_HTML_HREF = re.compile(r"\shref\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
# HTML spans WhatsApp has, written once their tag closes (a lone * would show as a star) ...
_HTML_MARKERS = {"b": "*", "strong": "*", "i": "_", "em": "_", "s": "~", "del": "~", "strike": "~"}
_HTML_SPANS = {*_HTML_MARKERS, "a"}
# ... and what any other tag becomes. A tag not listed is text: ``<nome>`` in an answer is a placeholder.
_HTML_TAGS = {
    **dict.fromkeys([*block_names, "br", "pre"], "\n"),
    **dict.fromkeys(["abbr", "big", "cite", "code", "font", "img", "ins", "kbd", "mark", "q", "small", "span",
                     "sub", "sup", "tt", "u"], ""),
    "li": "\n- ",
}

_BLANK_LINES = re.compile(r"\n{3,}")
_TASK = re.compile(r"^\[([ xX])\][ \t]+")
_CONTAINERS = {"bullet_list", "ordered_list", "list_item", "blockquote"}
_CODE = {"fence", "code_block"}
_COMPACT_TABLE_COLUMNS = 3


def render_for_whatsapp(markdown: str) -> str:
    """Rewrite Markdown (as language models write it) in WhatsApp's formatting."""
    text = _PRIVATE_USE.sub("", markdown.replace("\r\n", "\n").replace("\r", "\n"))
    text = _WHATSAPP_MONO.sub(lambda m: m.group(0).replace("\n", _MONO_NEWLINE), text)
    env: dict = {}
    tree = SyntaxTreeNode(_MARKDOWN.parse(text, env))
    rendered = _WhatsAppRenderer(tree, env).render()
    return rendered.replace(_MONO_NEWLINE, "\n").strip()


def _bare_url(state: StateInline, silent: bool) -> bool:
    """Inline rule: ``http(s)://...`` in running text is a link, so no ``*`` or ``_`` inside it reads as emphasis.

    Like markdown-it's own linkify rule (which needs linkify-it-py) it fires at the ``:`` that ends a text run,
    with the scheme still pending.
    """
    if state.src[state.pos] != ":" or state.linkLevel > 0:
        return False
    scheme = _BARE_URL_SCHEME.search(state.pending[-6:])  # "https" and the character before it
    rest = _BARE_URL_REST.match(state.src, state.pos) if scheme else None
    if not rest:
        return False
    url = _trim_url(scheme.group(0) + rest.group(0))
    if len(url) <= len(scheme.group(0)) + 3:  # nothing left after "://"
        return False
    if not silent:
        state.pending = state.pending[: -len(scheme.group(0))]
        link = state.push("link_open", "a", 1)
        link.attrs, link.markup = {"href": url}, "linkify"
        state.push("text", "", 0).content = url
        state.push("link_close", "a", -1).markup = "linkify"
    state.pos += len(url) - len(scheme.group(0))
    return True


def _trim_url(url: str) -> str:
    while url and (url[-1] in _URL_TRAIL or (url[-1] == ")" and url.count("(") < url.count(")"))):
        url = url[:-1]
    return url


def _markdown_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True, "inline_definitions": True}).enable(["table", "strikethrough"])
    md.inline.ruler.before("linkify", "bare_url", _bare_url)
    # the text goes to people, not into HTML: links keep their addresses as the model wrote them
    md.normalizeLink = md.normalizeLinkText = lambda url: url
    return md


_MARKDOWN = _markdown_parser()


class _WhatsAppRenderer:
    """One rendering: the syntax tree, whether single stars mean italic, and the addresses links point to."""

    def __init__(self, tree: SyntaxTreeNode, env: dict) -> None:
        self.tree = tree
        self.env = env
        self.markdown = any(_markdown_only(node) for node in tree.walk())
        self.linked = {node.attrs["href"] for node in tree.walk() if node.type == "link"}
        self.bold = True  # off inside a line that is bold as a whole (a heading, a table's header)

    def render(self) -> str:
        return self._blocks(self.tree.children)

    # ------------------------------------------------------------------ blocks

    def _blocks(self, nodes: list[SyntaxTreeNode]) -> str:
        return _join([(node, self._render(node)) for node in nodes])

    def _render(self, node: SyntaxTreeNode) -> str:
        return getattr(self, f"_{node.type}")(node)  # _paragraph, _em ...: one method per node type

    def _paragraph(self, node: SyntaxTreeNode) -> str:
        return self._inlines(node.children[0].children)

    def _heading(self, node: SyntaxTreeNode) -> str:
        return _wrapped(self._unbolded(node.children[0].children).strip(), "*")

    def _blockquote(self, node: SyntaxTreeNode) -> str:
        """Every line quoted once: WhatsApp has no nested quotes."""
        text = self._blocks(list(_unnested_quotes(node.children)))
        return "\n".join(f"> {line}" if line.strip() else "" for line in text.split("\n"))

    def _bullet_list(self, node: SyntaxTreeNode) -> str:
        return _join([(item, self._item(item, "- ")) for item in node.children])

    def _ordered_list(self, node: SyntaxTreeNode) -> str:
        return _join([(item, self._item(item, f"{item.info}. ")) for item in node.children])

    def _item(self, item: SyntaxTreeNode, marker: str) -> str:
        """A list item. Its blocks after the first (a nested list, a second paragraph) are indented to its text,
        where CommonMark reads them back as the item's; code is not, as the spaces would go into the code."""
        indent = " " * len(marker)
        blocks = [(child, self._render(child)) for child in item.children]
        text = _join([(child, text if n == 0 or child.type in _CODE else _indented(text, indent))
                      for n, (child, text) in enumerate(blocks)])
        if marker == "- ":
            text = _TASK.sub(lambda m: "☑ " if m.group(1).strip() else "☐ ", text)
        return (marker + text).rstrip()

    def _fence(self, node: SyntaxTreeNode) -> str:
        code = node.content.strip("\n")
        return f"```{code}```" if code.strip() else ""

    _code_block = _fence

    def _hr(self, node: SyntaxTreeNode) -> str:
        return ""  # a rule parts two blocks: _join leaves a blank line where it was

    def _definition(self, node: SyntaxTreeNode) -> str:
        """A link reference definition: shown by the links that use it; one no link uses keeps its address."""
        return "" if node.meta["url"] in self.linked else f"[{node.meta['label']}] {node.meta['url']}"

    def _html_block(self, node: SyntaxTreeNode) -> str:
        """Raw HTML: its tags read as inline HTML, its text as Markdown; block tags leave line breaks."""
        inline = SyntaxTreeNode(_MARKDOWN.parseInline(node.content, self.env)).children[0]
        lines = [line.strip() for line in self._inlines(inline.children).split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

    def _table(self, node: SyntaxTreeNode) -> str:
        """A narrow table one line per row; a wide one ``Header: value`` lines, a row a paragraph."""
        head, *body = node.children
        names = [self._unbolded(cell.children[0].children) for cell in head.children[0].children]
        rows = [[self._inlines(cell.children[0].children) for cell in row.children]
                for section in body for row in section.children]
        rows = [row for row in rows if any(row)]
        if not any(names):
            return "\n".join(" · ".join(filter(None, row)) for row in rows)
        if len(names) <= _COMPACT_TABLE_COLUMNS or not rows:
            header = _wrapped(" · ".join(filter(None, names)), "*")
            return "\n".join([header, *(" · ".join(filter(None, row)) for row in rows)])
        return "\n\n".join("\n".join(f"{name}: {cell}" if name else cell
                                     for name, cell in zip(names, row, strict=False) if cell)
                           for row in rows)

    # ------------------------------------------------------------------ inline

    def _inlines(self, nodes: list[SyntaxTreeNode]) -> str:
        """Inline nodes in order; an HTML span (``<b>``, ``<a href>``...) is written around what it holds once
        its tag closes, and dropped if it never does."""
        out: list[str] = []
        opened: list[tuple[str, int, str]] = []  # an open HTML span: its name, where its text starts, its tag
        for node in nodes:
            tag = _HTML_TAG.match(node.content) if node.type == "html_inline" else None
            name = tag.group(2).lower() if tag else ""
            if name not in _HTML_SPANS:
                out.append(self._render(node))
            elif not tag.group(1):
                opened.append((name, len(out), node.content))
            elif name in (open_name for open_name, _, _ in opened):
                while opened[-1][0] != name:  # spans opened inside it and never closed
                    opened.pop()
                _, start, opening = opened.pop()
                out[start:] = [self._html_span(name, "".join(out[start:]), opening)]
        return "".join(out)

    def _html_span(self, name: str, text: str, opening: str) -> str:
        if name == "a":
            href = _HTML_HREF.search(opening)
            return _link_text(text, href.group(1)) if href else text
        marker = "" if _HTML_MARKERS[name] == "*" and not self.bold else _HTML_MARKERS[name]
        return _wrapped(text, marker)

    def _unbolded(self, nodes: list[SyntaxTreeNode]) -> str:
        """Inline text without bold spans: it goes into a line that is bold as a whole."""
        self.bold = False
        try:
            return self._inlines(nodes)
        finally:
            self.bold = True

    def _text(self, node: SyntaxTreeNode) -> str:
        return node.content

    def _softbreak(self, node: SyntaxTreeNode) -> str:
        return "\n"

    _hardbreak = _softbreak

    def _code_inline(self, node: SyntaxTreeNode) -> str:
        code = node.content.strip()  # WhatsApp's markers must hug the text
        return f"```{code}```" if code else node.content

    def _strong(self, node: SyntaxTreeNode) -> str:
        return self._styled(node, "*" if self.bold else "")

    def _s(self, node: SyntaxTreeNode) -> str:
        return self._styled(node, "~")

    def _em(self, node: SyntaxTreeNode) -> str:
        marker = "_" if self.markdown or node.markup == "_" else "*"
        inner = [child for child in node.children if not _empty_text(child)]
        if len(inner) == 1 and inner[0].type == "strong" and not _glued(node):
            # ***x*** parses as italic around bold; WhatsApp's bold italic is written *_x_*
            return _wrapped(_wrapped(self._inlines(inner[0].children), marker), "*" if self.bold else "")
        return self._styled(node, marker)

    def _styled(self, node: SyntaxTreeNode, marker: str) -> str:
        inner = self._inlines(node.children)
        if _glued(node):  # WhatsApp formats no span glued to a word: it stays as the model wrote it
            return f"{node.markup}{inner}{node.markup}"
        return _wrapped(inner, marker)

    def _link(self, node: SyntaxTreeNode) -> str:
        return _link_text(self._inlines(node.children), node.attrs["href"])

    def _image(self, node: SyntaxTreeNode) -> str:
        return _link_text(self._inlines(node.children), node.attrs["src"])

    def _html_inline(self, node: SyntaxTreeNode) -> str:
        tag = _HTML_TAG.match(node.content)
        if not tag:  # a comment, declaration or processing instruction
            return ""
        closing, name = tag.group(1), tag.group(2).lower()
        if name not in _HTML_TAGS:
            return node.content
        return "" if name == "li" and closing else _HTML_TAGS[name]


def _join(rendered: list[tuple[SyntaxTreeNode, str]]) -> str:
    """Rendered blocks, apart (a blank line between) where the source had a blank line, a dropped block
    (a rule) or a table between them, else on consecutive lines."""
    out, previous, dropped = "", None, False
    for node, text in rendered:
        if not text:
            dropped = previous is not None
            continue
        if previous is not None:
            apart = dropped or "table" in (previous.type, node.type) or node.map[0] > _end_line(previous)
            out += "\n\n" if apart else "\n"
        out += text
        previous, dropped = node, False
    return out


def _end_line(node: SyntaxTreeNode) -> int:
    """The line after a block's last line of text (a list's own range also holds the blank lines after it)."""
    while node.type in _CONTAINERS and node.children:
        node = node.children[-1]
    return node.map[1]


def _wrapped(text: str, marker: str) -> str:
    """``text`` between formatting markers, line by line: a WhatsApp span does not cross a line break."""
    return "\n".join(f"{marker}{line}{marker}" if line.strip() else line for line in text.split("\n"))


def _indented(text: str, indent: str) -> str:
    return "\n".join(indent + line if line else line for line in text.split("\n"))


def _unnested_quotes(nodes: list[SyntaxTreeNode]) -> Iterator[SyntaxTreeNode]:
    for node in nodes:
        if node.type == "blockquote":
            yield from _unnested_quotes(node.children)
        else:
            yield node


def _markdown_only(node: SyntaxTreeNode) -> bool:
    """Whether a node is Markdown that WhatsApp lacks (then a single *x* means italic, not bold)."""
    if node.type in ("strong", "s"):
        return not _glued(node)
    if node.type == "link":
        return node.markup not in ("autolink", "linkify")
    return node.type in ("heading", "table", "fence", "hr", "image")


def _glued(node: SyntaxTreeNode) -> bool:
    """Whether emphasis touches a letter or digit outside its markers (2*3*4, __init__.py)."""
    return bool(_ALNUM.match(_text_beside(node, before=True)[-1:]) or _GLUED_AFTER.match(_text_beside(node)[:2]))


def _text_beside(node: SyntaxTreeNode, before: bool = False) -> str:
    """The text next to an inline node, past the empty text nodes markdown-it leaves where markers were."""
    while (node := node.previous_sibling if before else node.next_sibling) is not None:
        if not _empty_text(node):
            return node.content if node.type == "text" else ""
    return ""


def _empty_text(node: SyntaxTreeNode) -> bool:
    return node.type == "text" and not node.content


def _link_text(label: str, url: str) -> str:
    """``label (url)``, or the address alone when there is no label or the label is the address. A space
    (possible in ``[x](<a b>)``) is encoded, or WhatsApp would end the link there."""
    label, shown_url = label.strip(), _SHOWN_SCHEME.sub("", url).replace(" ", "%20")
    if not label or _same_address(label, url):
        return shown_url
    return f"{label} ({shown_url})"


def _same_address(label: str, url: str) -> bool:
    def bare(value: str) -> str:
        return _SAME_ADDRESS_NOISE.sub("", value.strip()).rstrip("/").lower()

    return bare(label) == bare(url)
