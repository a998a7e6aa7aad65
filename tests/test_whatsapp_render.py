"""Markdown -> WhatsApp rendering and splitting long text into WhatsApp-sized messages."""
from __future__ import annotations

import random
import re

import pytest

from runtime.whatsapp.render import WHATSAPP_TEXT_LIMIT, render_for_whatsapp, split_message
from tests.conftest import DOCS

# --------------------------------------------------------------------------- rendering

RENDER_CASES = [
    # emphasis
    ("**bold**", "*bold*"),
    ("__bold__", "*bold*"),
    ("Olá **Maria**, seu pedido #123 foi enviado.", "Olá *Maria*, seu pedido #123 foi enviado."),
    ("**Nota:** isto é *importante*", "*Nota:* isto é _importante_"),
    ("**Nota:** isto é _importante_", "*Nota:* isto é _importante_"),
    ("***muito*** forte", "*_muito_* forte"),
    ("Texto com **negrito com *itálico* dentro**.", "Texto com *negrito com _itálico_ dentro*."),
    ("~~velho~~ novo", "~velho~ novo"),
    ("Preço **R$ 10**.", "Preço *R$ 10*."),
    ("**a** e **b**", "*a* e *b*"),
    # already WhatsApp-formatted: left alone
    ("*Olá!* Tudo bem? _Veja_ ~isso~ ```code```", "*Olá!* Tudo bem? _Veja_ ~isso~ ```code```"),
    ("*Bem-vindo!* Escolha:\n1. Opção\n2. Outra", "*Bem-vindo!* Escolha:\n1. Opção\n2. Outra"),
    ("```linha 1\nlinha 2``` e *b*", "```linha 1\nlinha 2``` e *b*"),
    ("> citação do _cliente_", "> citação do _cliente_"),
    ("- um\n- dois", "- um\n- dois"),
    ("• um\n• dois", "• um\n• dois"),
    # what must not be taken for formatting
    ("Calcule 2*3*4 = 24", "Calcule 2*3*4 = 24"),
    ("**Total:** 2*3*4 = 24 e a*b", "*Total:* 2*3*4 = 24 e a*b"),
    ("Preço: R$ 10 * 3 = R$ 30", "Preço: R$ 10 * 3 = R$ 30"),
    ("**ok** snake_case_words e meu_arquivo_final.pdf", "*ok* snake_case_words e meu_arquivo_final.pdf"),
    ("**ok** __init__.py", "*ok* __init__.py"),
    ("**ok** foo__bar__baz", "*ok* foo__bar__baz"),
    ("Email joao_silva_2@mail.com **ok**", "Email joao_silva_2@mail.com *ok*"),
    ("**ok** https://site.com/a_b_c/*x*/d__e__?q=*1*", "*ok* https://site.com/a_b_c/*x*/d__e__?q=*1*"),
    ("**https://x.com/a_b**", "*https://x.com/a_b*"),
    ("Veja (https://x.com/a_b).", "Veja (https://x.com/a_b)."),
    ("**negrito sem fechar e *itálico sem fechar", "**negrito sem fechar e *itálico sem fechar"),
    ("** espaço **", "** espaço **"),
    ("**a**b", "**a**b"),
    ("#hashtag não é título", "#hashtag não é título"),
    ("x < y > z e a<b", "x < y > z e a<b"),
    ("Olá <nome>, **tudo bem**?", "Olá <nome>, *tudo bem*?"),
    ("Use \\*\\*literal\\*\\* e **b**", "Use **literal** e *b*"),
    # code
    ("Use `pip install atende`", "Use ```pip install atende```"),
    ("Use `**não converta**` aqui", "Use ```**não converta**``` aqui"),
    ("``código com ` crase``", "```código com ` crase```"),
    ("Multiplicar: `a*b` e **ênfase**", "Multiplicar: ```a*b``` e *ênfase*"),
    ("```python\ndef f(x):\n    return x*2\n```", "```def f(x):\n    return x*2```"),
    ("```\n\n\nsó código\n\n\nfim\n```\n\n**x**", "```só código\n\n\nfim```\n\n*x*"),
    ("~~~\ncode\n~~~", "```code```"),
    ("1. Rode:\n   ```bash\n   make\n   ```\n2. Pronto", "1. Rode:\n```make```\n2. Pronto"),
    ("Antes\n```\nx = 1\n```\nDepois **b**", "Antes\n```x = 1```\nDepois *b*"),
    ("```\n```\ntexto", "texto"),
    # headings and rules
    ("# Preços", "*Preços*"),
    ("## **Detalhes** ##", "*Detalhes*"),
    ("### Passo 1: configurar", "*Passo 1: configurar*"),
    ("Título\n===\n\nTexto", "*Título*\n\nTexto"),
    ("Título\n---\nTexto", "*Título*\nTexto"),
    ("Texto\n\n---\n\nMais", "Texto\n\nMais"),
    ("A\n\n***\n\nB", "A\n\nB"),
    # lists
    ("* um\n* dois\n\n+ três", "- um\n- dois\n\n- três"),
    ("- item **um**\n- item *dois* `três`", "- item *um*\n- item _dois_ ```três```"),
    # without any Markdown-only mark, a single *x* is WhatsApp bold and stays
    ("- item *um*\n- item `dois`", "- item *um*\n- item ```dois```"),
    ("1) primeiro\n2) segundo", "1. primeiro\n2. segundo"),
    ("- a\n  - b\n    - c\n- d", "- a\n  - b\n    - c\n- d"),
    ("1. passo\n    - detalhe\n2. outro", "1. passo\n  - detalhe\n2. outro"),
    ("- [ ] fazer\n- [x] feito", "- ☐ fazer\n- ☑ feito"),
    # tables
    ("| Plano | Preço |\n|---|---|\n| Basic | $10 |\n| Pro | $20 |", "*Plano · Preço*\nBasic · $10\nPro · $20"),
    ("Item | Price\n---|---\nApples | 1.99", "*Item · Price*\nApples · 1.99"),
    (
        "| Plano | Preço | Usuários | Suporte |\n|:--|:-:|--:|---|\n| Basic | $10 | 1 | e-mail |\n| Pro | $20 | 5 | **24h** |",
        "Plano: Basic\nPreço: $10\nUsuários: 1\nSuporte: e-mail\n\nPlano: Pro\nPreço: $20\nUsuários: 5\nSuporte: *24h*",
    ),
    ("Veja:\n| a | b |\n|---|---|\n| x \\| y | 2 |\n\ndepois", "Veja:\n\n*a · b*\nx | y · 2\n\ndepois"),
    ("|  | b |\n|---|---|\n| 1 | 2 |", "*b*\n1 · 2"),
    ("| **Plano** | [site](https://x.com) |\n|---|---|\n| A | B |", "*Plano · site (https://x.com)*\nA · B"),
    # links and images
    ("Veja [o site](https://x.com/a_b)", "Veja o site (https://x.com/a_b)"),
    ("[https://y.com](https://y.com)", "https://y.com"),
    ("[y.com](https://www.y.com/)", "https://www.y.com/"),
    ("**Nota**: [site](https://x.com \"Título\")", "*Nota*: site (https://x.com)"),
    ("[contato@x.com](mailto:contato@x.com) e [ligue](tel:+5511999)", "contato@x.com e ligue (+5511999)"),
    ("Wiki [Python](https://en.wikipedia.org/wiki/Python_(programming_language)) ok",
     "Wiki Python (https://en.wikipedia.org/wiki/Python_(programming_language)) ok"),
    ("[**Loja**](https://loja.com)", "*Loja* (https://loja.com)"),
    ("![Logo da loja](https://x.com/logo.png)", "Logo da loja (https://x.com/logo.png)"),
    ("![](https://x.com/img.png)", "https://x.com/img.png"),
    ("<https://x.com/a_b> e <contato@x.com>", "https://x.com/a_b e contato@x.com"),
    ("Fonte [1] aqui.\n\n[1]: https://a.com/x\n[2]: https://b.com", "Fonte 1 (https://a.com/x) aqui.\n\n[2] https://b.com"),
    ("[nota] sem definição e **b**", "[nota] sem definição e *b*"),
    # HTML
    ("<b>oi</b> <i>você</i> <s>não</s>", "*oi* _você_ ~não~"),
    ("linha 1<br>linha 2<br/>linha 3", "linha 1\nlinha 2\nlinha 3"),
    ("<p>Um</p><p>Dois</p>", "Um\n\nDois"),
    ("<ul><li>a</li><li>b</li></ul>fim", "- a\n- b\nfim"),
    ('<a href="https://x.com">site</a>', "site (https://x.com)"),
    ("<!-- comentário -->Visível", "Visível"),
    ("<span style='color:red'>vermelho</span> &amp; AT&T &lt;3", "vermelho & AT&T <3"),
    ("<details><summary>Mais</summary>Conteúdo</details>", "Mais\nConteúdo"),
    # quotes
    ("> **Nota:** cuidado\n> segunda", "> *Nota:* cuidado\n> segunda"),
    ("> citação\n>\n> > aninhada", "> citação\n\n> aninhada"),
    ("> # Título citado", "> *Título citado*"),
    # whitespace
    ("Texto\n\n\n\n\nMais", "Texto\n\nMais"),
    ("  \n\nTexto  \n\n  ", "Texto"),
    ("Linha com espaço final  \nPróxima\\\nÚltima", "Linha com espaço final\nPróxima\nÚltima"),
    ("a\r\nb\rc", "a\nb\nc"),
    ("", ""),
    ("\u00a0\n\t", ""),
    ("Emoji 👍🏽 e acentuação: ação, você, pôr", "Emoji 👍🏽 e acentuação: ação, você, pôr"),
]


@pytest.mark.parametrize("markdown, expected", RENDER_CASES)
def test_render_for_whatsapp(markdown, expected):
    assert render_for_whatsapp(markdown) == expected


@pytest.mark.parametrize("markdown, expected", [c for c in RENDER_CASES if "\\" not in c[0]])
def test_rendering_twice_changes_nothing(markdown, expected):
    assert render_for_whatsapp(expected) == expected


def test_a_typical_model_answer():
    answer = (
        "## Horários de atendimento\n\n"
        "Olá! Nosso **horário** é:\n\n"
        "| Dia | Horário |\n|-----|---------|\n| Seg–Sex | 9h–18h |\n| Sáb | 9h–13h |\n\n"
        "* Agende pelo [site](https://clinica.com.br/agendar?ref=wa_bot).\n"
        "* Ou ligue: `(11) 4002-8922`\n\n"
        "> *Dica:* chegue 10 minutos antes.\n\n\n"
        "Posso ajudar em algo mais? 😊"
    )
    assert render_for_whatsapp(answer) == (
        "*Horários de atendimento*\n\n"
        "Olá! Nosso *horário* é:\n\n"
        "*Dia · Horário*\nSeg–Sex · 9h–18h\nSáb · 9h–13h\n\n"
        "- Agende pelo site (https://clinica.com.br/agendar?ref=wa_bot).\n"
        "- Ou ligue: ```(11) 4002-8922```\n\n"
        "> _Dica:_ chegue 10 minutos antes.\n\n"
        "Posso ajudar em algo mais? 😊"
    )


def test_a_wide_table_without_rows_keeps_its_header():
    """Found by tests/test_fuzz_whatsapp.py: a header of more than three columns and no rows rendered as nothing."""
    assert render_for_whatsapp("| Dia | Abre | Fecha | Pausa |\n|---|---|---|---|") == "*Dia · Abre · Fecha · Pausa*"
    assert render_for_whatsapp("| Dia | Abre | Fecha | Pausa |\n|---|---|---|---|\n| | | | |") == "*Dia · Abre · Fecha · Pausa*"


def test_private_use_characters_in_the_input_cannot_forge_markers():
    assert render_for_whatsapp("a\ue000b\ue0100\ue011c **d**") == "ab0c *d*"


@pytest.mark.skipif(not (DOCS / "md").is_dir(), reason="shared documents not found")
def test_a_long_real_markdown_document_keeps_its_words():
    source = (DOCS / "md" / "the-art-of-command-line-README-pt.md").read_text(encoding="utf-8")
    rendered = render_for_whatsapp(source)
    assert "\n\n\n" not in rendered
    for word in ("Fluência", "negligenciada", "produtividade", "Meta", "http://www.quora.com"):
        assert word in source and word in rendered
    assert not re.search(r"^#{1,6} ", rendered, re.MULTILINE)


# --------------------------------------------------------------------------- splitting


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
