"""Turn a model's Markdown into WhatsApp text.

WhatsApp knows ``*bold*``, ``_italic_``, ``~strike~``, ```` ```monospace``` ````, ``> quote`` and
``- item`` lists; nothing else. Markdown that has no WhatsApp form becomes plain lines: headings a
bold line, tables one line per row or ``Header: value`` lines, links ``text (url)``.

A single ``*word*`` is Markdown italic but WhatsApp bold. Text that shows no sign of Markdown
(no ``**``, ``__``, ``~~``, heading, link, table or fence) is taken to be WhatsApp-formatted
already and its single stars are left alone; in Markdown text they become ``_italic_``.
The function is pure.
"""
from __future__ import annotations

import re

# Private-use characters mark converted emphasis and protected snippets while lines are rewritten.
_BOLD, _ITALIC, _STRIKE = "\ue000", "\ue001", "\ue002"
_TOKEN_OPEN, _TOKEN_CLOSE = "\ue010", "\ue011"
_PRIVATE = re.compile("[\ue000-\ue011]")
_TOKEN = re.compile(f"{_TOKEN_OPEN}(\\d+){_TOKEN_CLOSE}")
_MARKERS = {_BOLD: "*", _ITALIC: "_", _STRIKE: "~"}

# A backtick fence's info string has no backticks, so ```code``` on one line stays inline code.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}(?=[^`\n]*$)|~{3,})[^\n]*\n(?P<code>.*?)"
    r"(?:(?<=\n)[ \t]*(?P=fence)[`~]*[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
# WhatsApp's own multi-line monospace: ```text``` hugging its text, with no fence line inside.
_WHATSAPP_MONO = re.compile(r"```(?=[^\s`])(?:(?!\n[ \t]*```)[^`]|`(?!``))+?(?<=[^\s`])```", re.DOTALL)
_REF_DEF = re.compile(r"^[ \t]{0,3}\[([^\]\n]+)\]:[ \t]*<?(\S+?)>?(?:[ \t]+[\"'(].*[\"')])?[ \t]*$", re.MULTILINE)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(\s*<?([^\s()<>]+(?:\([^\s()]*\))?[^\s()<>]*)>?(?:\s+[\"'(][^\n]*?[\"')])?\s*\)")
_LINK = re.compile(r"\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]\(\s*<?([^\s()<>]+(?:\([^\s()]*\))?[^\s()<>]*)>?(?:\s+[\"'(][^\n]*?[\"')])?\s*\)")
_REF_LINK = re.compile(r"\[([^\[\]\n]+)\](?:\[([^\[\]\n]*)\])?")
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto|tel):[^\s<>]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)>")
_BARE_URL = re.compile("(?:https?://|www\\.)[^\\s<>\"\ue000-\ue011]+", re.IGNORECASE)
_HTML_TAGS = (
    "a|abbr|article|aside|b|big|blockquote|body|br|center|cite|code|dd|del|details|div|dl|dt|em|"
    "font|footer|h[1-6]|head|header|hr|html|i|img|ins|kbd|li|main|mark|nav|ol|p|pre|q|s|section|"
    "small|span|strike|strong|sub|summary|sup|table|tbody|td|tfoot|th|thead|tr|tt|u|ul"
)
_HTML_TAG = re.compile(rf"</?(?:{_HTML_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_HTML_BLOCK_TAGS = "br|hr|p|div|tr|table|ul|ol|h[1-6]|blockquote|pre|section|article|header|footer|details|summary"
_HTML_BREAK = re.compile(rf"[ \t]*</?(?:{_HTML_BLOCK_TAGS})(?:\s[^<>]*)?/?>[ \t]*", re.IGNORECASE)
_HTML_ITEM = re.compile(r"[ \t]*<li(?:\s[^<>]*)?>[ \t]*", re.IGNORECASE)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_ANCHOR = re.compile(r"<a\s[^<>]*?href\s*=\s*[\"']([^\"']+)[\"'][^<>]*>(.*?)</a>", re.IGNORECASE | re.DOTALL)
_HTML_STYLE = {
    _BOLD: re.compile(r"<(b|strong)>(.+?)</\1>", re.IGNORECASE),
    _ITALIC: re.compile(r"<(i|em)>(.+?)</\1>", re.IGNORECASE),
    _STRIKE: re.compile(r"<(s|del|strike)>(.+?)</\1>", re.IGNORECASE),
}
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&apos;": "'", "&nbsp;": " "}

# Emphasis may not open after, nor close before, a letter or digit: keeps 2*3*4 and snake_case intact.
_NOT_ALNUM_BEFORE = r"(?<![^\W_])"
_NOT_ALNUM_AFTER = r"(?![^\W_])"
_BOLD_ITALIC_STARS = re.compile(_NOT_ALNUM_BEFORE + r"\*\*\*(?=[^\s*])([^\n]+?)(?<=[^\s*])\*\*\*" + _NOT_ALNUM_AFTER)
_BOLD_STARS = re.compile(_NOT_ALNUM_BEFORE + r"\*\*(?=[^\s*])([^\n]+?)(?<=[^\s*])\*\*" + _NOT_ALNUM_AFTER)
# ... and a closing __ must not lead into a name either (__init__.py is a file name, not bold "init")
_BOLD_UNDERSCORES = re.compile(r"(?<!\w)__(?=[^\s_])([^\n]+?)(?<=[^\s_])__(?!\w|[.\-/]\w)")
_STRIKE_TILDES = re.compile(r"~~(?=[^\s~])([^\n]+?)(?<=[^\s~])~~")
_ITALIC_STAR = re.compile(_NOT_ALNUM_BEFORE + r"(?<!\*)\*(?=[^\s*])([^*\n]*?[^\s*])?\*(?!\*)" + _NOT_ALNUM_AFTER)

_MARKDOWN_BLOCKS = re.compile(
    r"^[ \t]*#{1,6}[ \t]|\]\([^)\s]+\)|^[ \t]*(?:```|~~~)[\w+#.-]*[ \t]*$|^[ \t]*\|?[ \t]*:?-{3,}",
    re.MULTILINE,
)
_HEADING = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^[ \t]{0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_QUOTE = re.compile(r"^[ \t]*>[ \t]?(.*)$")
_BULLET = re.compile(r"^([ \t]*)([-*+•])[ \t]+(.*)$")
_ORDERED = re.compile(r"^([ \t]*)(\d{1,9})[.)][ \t]+(.*)$")
_TASK = re.compile(r"^\[([ xX])\][ \t]+")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_COMPACT_TABLE_COLUMNS = 3


def render_for_whatsapp(markdown: str) -> str:
    """Rewrite Markdown (as language models write it) in WhatsApp's formatting."""
    text = _PRIVATE.sub("", markdown.replace("\r\n", "\n").replace("\r", "\n"))
    return _Renderer().render(text)


class _Renderer:
    """One rendering: holds the protected snippets (code, URLs) until the text is put back together."""

    def __init__(self) -> None:
        self.markdown_mode = False
        self.tokens: list[str] = []
        self.references: dict[str, tuple[str, str]] = {}
        self.used_references: set[str] = set()

    def render(self, text: str) -> str:
        text = _WHATSAPP_MONO.sub(lambda m: self._protect(m.group(0)) if "\n" in m.group(0) else m.group(0), text)
        self.markdown_mode = _looks_like_markdown(text)
        text = _FENCE.sub(self._fence, text)
        text = _HTML_COMMENT.sub("", text)
        text = _REF_DEF.sub(self._reference, text)
        lines = self._blocks(text.split("\n"))
        # a definition no link used would vanish from the rendered Markdown; keep its URL visible
        lines += [f"[{label}] {self._protect(url)}" for key, (label, url) in self.references.items()
                  if key not in self.used_references]
        text = "\n".join(line.rstrip() for line in "\n".join(lines).split("\n"))
        text = _BLANK_RUNS.sub("\n\n", text).strip("\n")
        return self._restore(text).strip()

    # ------------------------------------------------------------------ protected snippets

    def _protect(self, snippet: str) -> str:
        self.tokens.append(snippet)
        return f"{_TOKEN_OPEN}{len(self.tokens) - 1}{_TOKEN_CLOSE}"

    def _restore(self, text: str) -> str:
        for _ in range(3):  # a token may hold another (a URL inside link text)
            text = _TOKEN.sub(lambda m: self.tokens[int(m.group(1))], text)
        for marker, char in _MARKERS.items():
            text = text.replace(marker, char)
        return text

    def _fence(self, m: re.Match) -> str:
        indent = len(m.group("indent"))
        lines = [line[indent:] if not line[:indent].strip() else line.lstrip() for line in m.group("code").split("\n")]
        code = "\n".join(lines).strip("\n")
        if not code.strip():
            return ""
        return self._protect(f"```{code}```")

    def _reference(self, m: re.Match) -> str:
        self.references[m.group(1).strip().lower()] = (m.group(1).strip(), m.group(2))
        return ""

    # ------------------------------------------------------------------ blocks

    def _blocks(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        list_indents: list[int] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                out.append("")
                i += 1
                continue
            if "|" in line and i + 1 < len(lines) and "|" in lines[i + 1] and _TABLE_SEPARATOR.match(lines[i + 1]):
                end = i + 2
                while end < len(lines) and "|" in lines[end] and lines[end].strip():
                    end += 1
                out.extend(["", *self._table(lines[i], lines[i + 2:end]), ""])
                list_indents.clear()
                i = end
                continue
            setext = _SETEXT.match(line)
            if setext and out and out[-1].strip() and self._is_paragraph(lines[i - 1]) and not list_indents:
                if setext.group(1)[0] == "=" or len(setext.group(1)) >= 3:
                    out[-1] = self._heading_line(lines[i - 1].strip())
                    i += 1
                    continue
            out.append(self._line(line, list_indents))
            i += 1
        return out

    @staticmethod
    def _is_paragraph(line: str) -> bool:
        return not (
            _HEADING.match(line) or _BULLET.match(line) or _ORDERED.match(line) or _QUOTE.match(line)
            or _RULE.match(line) or _TOKEN.fullmatch(line.strip()) or "|" in line
        )

    def _line(self, line: str, list_indents: list[int]) -> str:
        if _TOKEN.fullmatch(line.strip()):
            list_indents.clear()
            return line.strip()
        if _RULE.match(line):
            list_indents.clear()
            return ""
        heading = _HEADING.match(line)
        if heading:
            list_indents.clear()
            return self._heading_line(heading.group(2))
        quote = _QUOTE.match(line)
        if quote:
            inner = quote.group(1)
            while _QUOTE.match(inner):
                inner = _QUOTE.match(inner).group(1)
            inner = self._line(inner, [])
            return "> " + inner if inner.strip() else ""
        item = _BULLET.match(line) or _ORDERED.match(line)
        if item:
            level = _list_level(list_indents, len(item.group(1).expandtabs(4)))
            content = item.group(item.lastindex)
            if item.re is _BULLET:
                task = _TASK.match(content)
                if task:
                    content = ("☑ " if task.group(1).strip() else "☐ ") + content[task.end():]
                marker = "• " if item.group(2) == "•" else "- "
            else:
                marker = f"{item.group(2)}. "
            return "  " * level + marker + self._inline(content)
        indent = len(line) - len(line.lstrip())
        if not indent:
            list_indents.clear()
        prefix = "  " * len(list_indents) if indent and list_indents else ""
        return prefix + self._inline(line.strip().rstrip("\\").rstrip())

    def _heading_line(self, text: str) -> str:
        inner = self._inline(text)
        inner = inner.replace(_BOLD, "")
        return f"{_BOLD}{inner.strip()}{_BOLD}" if inner.strip() else ""

    def _table(self, header: str, rows: list[str]) -> list[str]:
        names = [self._inline(cell).replace(_BOLD, "") for cell in _cells(header)]
        body = [[self._inline(cell) for cell in _cells(row)] for row in rows if not _TABLE_SEPARATOR.match(row)]
        has_header = any(name.strip() for name in names)
        # a wide table's header goes beside each value; with no values it stands alone, as a narrow one's does
        if not has_header or len(names) <= _COMPACT_TABLE_COLUMNS or not any(any(row) for row in body):
            out = [f"{_BOLD}{' · '.join(name for name in names if name)}{_BOLD}"] if has_header else []
            out += [" · ".join(cell for cell in row if cell) for row in body if any(row)]
            return out
        out: list[str] = []
        for row in body:
            pairs = [(names[k] if k < len(names) else "", cell) for k, cell in enumerate(row)]
            out += [f"{name}: {cell}" if name else cell for name, cell in pairs if cell]
            out.append("")
        return out[:-1]

    # ------------------------------------------------------------------ inline

    def _inline(self, text: str) -> str:
        text = _CODE_SPAN.sub(lambda m: self._protect(f"```{_code_span_text(m.group(2))}```"), text)
        text = _ESCAPE.sub(lambda m: self._protect(m.group(1)), text)
        text = _HTML_ANCHOR.sub(lambda m: self._link(m.group(2), m.group(1)), text)
        text = _IMAGE.sub(lambda m: self._link(m.group(1), m.group(2)), text)
        text = _LINK.sub(lambda m: self._link(m.group(1), m.group(2)), text)
        if self.references:
            text = _REF_LINK.sub(self._reference_link, text)
        text = _AUTOLINK.sub(lambda m: self._protect(m.group(1).removeprefix("mailto:")), text)
        text = _BARE_URL.sub(self._bare_url, text)
        for marker, pattern in _HTML_STYLE.items():
            text = pattern.sub(lambda m, marker=marker: f"{marker}{m.group(2)}{marker}", text)
        text = _HTML_ITEM.sub("\n- ", text)
        text = _HTML_BREAK.sub("\n", text)
        text = _HTML_TAG.sub("", text)
        for entity, char in _ENTITIES.items():
            text = text.replace(entity, char)
        return self._emphasis(text)

    def _emphasis(self, text: str) -> str:
        text = _BOLD_ITALIC_STARS.sub(lambda m: f"{_BOLD}{_ITALIC}{m.group(1)}{_ITALIC}{_BOLD}", text)
        text = _BOLD_STARS.sub(lambda m: f"{_BOLD}{m.group(1)}{_BOLD}", text)
        text = _BOLD_UNDERSCORES.sub(lambda m: f"{_BOLD}{m.group(1)}{_BOLD}", text)
        text = _STRIKE_TILDES.sub(lambda m: f"{_STRIKE}{m.group(1)}{_STRIKE}", text)
        if self.markdown_mode:
            text = _ITALIC_STAR.sub(lambda m: f"{_ITALIC}{m.group(1) or ''}{_ITALIC}", text)
        return text

    def _link(self, label: str, url: str) -> str:
        label = label.strip()
        shown_url = url.removeprefix("mailto:").removeprefix("tel:")
        if not label or _same_address(label, url):
            return self._protect(shown_url)
        return f"{label} ({self._protect(shown_url)})"

    def _reference_link(self, m: re.Match) -> str:
        key = (m.group(2) or m.group(1)).strip().lower()
        if key not in self.references:
            return m.group(0)
        self.used_references.add(key)
        return self._link(m.group(1), self.references[key][1])

    def _bare_url(self, m: re.Match) -> str:
        url = m.group(0)
        trail = ""
        while url and (url[-1] in ".,;:!?*_~'\"" or (url[-1] == ")" and url.count("(") < url.count(")"))):
            trail = url[-1] + trail
            url = url[:-1]
        return self._protect(url) + trail if url else m.group(0)


def _looks_like_markdown(text: str) -> bool:
    """Whether the text uses Markdown that WhatsApp lacks (then a single *x* means italic, not bold)."""
    return any(p.search(text) for p in (_MARKDOWN_BLOCKS, _BOLD_STARS, _BOLD_UNDERSCORES, _STRIKE_TILDES))


def _list_level(indents: list[int], indent: int) -> int:
    while indents and indent < indents[-1]:
        indents.pop()
    if not indents or indent > indents[-1]:
        indents.append(indent)
    return len(indents) - 1


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)]


def _code_span_text(text: str) -> str:
    return text[1:-1] if len(text) > 2 and text[0] == text[-1] == " " else text


def _same_address(label: str, url: str) -> bool:
    def bare(value: str) -> str:
        value = re.sub(r"^(?:https?://|mailto:|tel:)", "", value.strip(), flags=re.IGNORECASE)
        return value.removeprefix("www.").rstrip("/").lower()

    return bare(label) == bare(url)
