"""Splitting long WhatsApp text into WhatsApp-sized messages."""
from __future__ import annotations

import random
import re

import pytest

from runtime.whatsapp.render import render_for_whatsapp
from runtime.whatsapp.split import WHATSAPP_TEXT_LIMIT, split_message
from tests.conftest import DOCS


def _words(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_parts(text: str, parts: list[str], limit: int) -> None:
    assert parts, "non-empty text gives at least one part"
    for part in parts:
        assert 0 < len(part) <= limit
        assert part == part.strip()
    assert _only_markers_added(_words(text), _words("".join(parts)))


def _only_markers_added(original: str, joined: str) -> bool:
    """``joined`` is ``original`` plus, at most, formatting markers (a span reopened after a cut)."""
    i = 0
    for char in joined:
        if i < len(original) and char == original[i]:
            i += 1
        elif char not in "*_~`":
            return False
    return i == len(original)


@pytest.mark.parametrize("text, limit, expected", [
    ("curto", 4096, ["curto"]),
    ("  com espaços  \n", 4096, ["com espaços"]),
    ("", 4096, []),
    (" \n\t ", 4096, []),
    ("exatamente", 10, ["exatamente"]),
    # paragraph boundary first, even if a line or sentence end comes later
    ("Um parágrafo.\n\nOutro. Com frases\nmais longas aqui", 40, ["Um parágrafo.", "Outro. Com frases\nmais longas aqui"]),
    # then lines
    ("linha um\nlinha dois\nlinha três", 20, ["linha um\nlinha dois", "linha três"]),
    # then sentence ends
    ("Primeira frase. Segunda frase! Terceira?", 32, ["Primeira frase. Segunda frase!", "Terceira?"]),
    ("Reticências… e depois", 15, ["Reticências…", "e depois"]),
    ("Ele disse \"Oi.\" E saiu", 16, ["Ele disse \"Oi.\"", "E saiu"]),
    # then spaces
    ("palavra palavra palavra palavra", 16, ["palavra palavra", "palavra palavra"]),
    # then anywhere
    ("a" * 25, 10, ["a" * 10, "a" * 10, "a" * 5]),
    ("https://x.com/" + "a" * 20, 12, ["https://x.co", "m/aaaaaaaaaa", "aaaaaaaaaa"]),
])
def test_split_message(text, limit, expected):
    assert split_message(text, limit) == expected


@pytest.mark.parametrize("text, limit, expected", [
    # the last space that fits is inside the bold span: cut before the span instead
    ("aaa *negrito com espaços* bbb", 22, ["aaa", "*negrito com espaços*", "bbb"]),
    ("Veja _isto aqui_ agora", 13, ["Veja", "_isto aqui_", "agora"]),
    ("x ~riscado aqui~ y", 15, ["x", "~riscado aqui~", "y"]),
    ("ok ```a b c d``` fim", 16, ["ok ```a b c d```", "fim"]),
    ("ok ```a b c d``` fim", 14, ["ok", "```a b c d```", "fim"]),
    # a sentence end inside the span does not count either
    ("Leia *isto. E aquilo* depois", 20, ["Leia", "*isto. E aquilo*", "depois"]),
    # not spans: 2*3*4 and snake_case may be cut anywhere a space allows
    ("calc 2*3*4 e snake_case_x", 12, ["calc 2*3*4 e", "snake_case_x"]),
])
def test_split_avoids_cutting_formatting_spans(text, limit, expected):
    assert split_message(text, limit) == expected


def test_a_monospace_block_longer_than_the_limit_is_closed_and_reopened():
    code = "```" + "\n".join(f"linha {i}" for i in range(30)) + "```"
    parts = split_message(code, 60)
    assert len(parts) > 1
    for part in parts:
        assert len(part) <= 60
        assert part.startswith("```") and part.endswith("```") and part.count("```") == 2
    assert _words("".join(p[3:-3] for p in parts)) == _words(code[3:-3])


def test_a_bold_span_longer_than_the_limit_is_closed_and_reopened():
    parts = split_message("*" + "palavra " * 10 + "fim*", 30)
    assert all(p.startswith("*") and p.endswith("*") and len(p) <= 30 for p in parts)
    assert _words("".join(p.strip("*") for p in parts)) == _words("palavra " * 10 + "fim")


def test_hard_cuts_keep_emoji_sequences_and_accents_whole():
    family = "👨\u200d👩\u200d👧"
    parts = split_message(family * 10, 12)
    for part in parts:
        assert not part.startswith("\u200d") and not part.endswith("\u200d")
    assert "".join(parts) == family * 10
    accented = "e\u0301" * 20
    parts = split_message(accented, 9)
    assert all(not p.startswith("\u0301") for p in parts) and "".join(parts) == accented
    toned = "👍🏽" * 10
    assert all(not p.startswith("🏽") for p in split_message(toned, 9))


def test_a_run_of_marks_that_cannot_be_cut_well_is_still_cut():
    parts = split_message("a" + "\u0301" * 30, 10)
    _check_parts("a" + "\u0301" * 30, parts, 10)


def test_limit_must_leave_room_to_work():
    with pytest.raises(ValueError):
        split_message("texto", 5)


def test_default_limit_is_whatsapps():
    text = "palavra " * 1500
    parts = split_message(text)
    assert WHATSAPP_TEXT_LIMIT == 4096
    assert len(parts) == 3 and all(len(p) <= 4096 for p in parts)


def _generated_text(rng: random.Random, paragraphs: int) -> str:
    """Chat-like text: sentences, bold/italic/strike/monospace spans, URLs, lists, long words."""
    words = ["olá", "pedido", "entrega", "amanhã", "R$", "10,50", "snake_case", "2*3", "você", "ação",
             "https://loja.com/p/a_b?x=1", "😊", "consulta", "horário", "supercalifragilisticexpialidocious"]
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            chosen = [rng.choice(words) for _ in range(rng.randint(2, 14))]
            if rng.random() < 0.4:
                i = rng.randrange(len(chosen))
                j = min(len(chosen), i + rng.randint(1, 3))
                mark = rng.choice(["*", "_", "~", "```"])
                chosen[i:j] = [mark + " ".join(chosen[i:j]) + mark]
            sentences.append(" ".join(chosen) + rng.choice([".", "!", "?", "…", ":", ""]))
        paragraph = " ".join(sentences)
        if rng.random() < 0.3:
            paragraph = "\n".join(f"- {s}" for s in sentences)
        out.append(paragraph)
    return "\n\n".join(out)


_SPAN = re.compile(r"```[^`\n]+```|(?<![^\W_])([*_~])[^\s*_~][^*_~\n]*?(?<=[^\s*_~])\1(?![^\W_])")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("limit", [40, 120, 700, 4096])
def test_generated_texts_split_within_limits_and_keep_everything(seed, limit):
    rng = random.Random(seed)
    text = _generated_text(rng, rng.randint(1, 60))
    parts = split_message(text, limit)
    _check_parts(text, parts, limit)
    # every formatting span that fits in a message arrives in one piece
    for m in _SPAN.finditer(text):
        if len(m.group(0)) <= limit // 2:
            assert any(m.group(0) in part for part in parts), m.group(0)


@pytest.mark.parametrize("seed", range(4))
def test_generated_texts_prefer_paragraph_boundaries(seed):
    rng = random.Random(100 + seed)
    paragraphs = [" ".join(["palavra"] * rng.randint(5, 60)) for _ in range(40)]
    text = "\n\n".join(paragraphs)
    parts = split_message(text, 1000)
    _check_parts(text, parts, 1000)
    for part in parts:  # paragraphs here are shorter than the limit, so none is cut
        assert all(p in paragraphs for p in part.split("\n\n"))


@pytest.mark.skipif(not (DOCS / "md").is_dir(), reason="shared documents not found")
def test_a_rendered_long_document_splits_cleanly():
    source = (DOCS / "md" / "the-art-of-command-line-README-pt.md").read_text(encoding="utf-8")
    rendered = render_for_whatsapp(source)
    parts = split_message(rendered)
    _check_parts(rendered, parts, WHATSAPP_TEXT_LIMIT)
    assert len(parts) >= 7
    assert all(len(p) > 1000 for p in parts[:-1])  # parts are not needlessly small
