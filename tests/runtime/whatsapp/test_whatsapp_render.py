"""Markdown -> WhatsApp rendering."""
from __future__ import annotations

import re

import pytest

from runtime.whatsapp.render import render_for_whatsapp
from tests.conftest import DOCS

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
    ("1. passo\n    - detalhe\n2. outro", "1. passo\n   - detalhe\n2. outro"),
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


# Markdown the hand-written regexes misread, which markdown-it-py parses as CommonMark does
LIBRARY_CASES = [
    # a span across a line break is closed and opened on each line: WhatsApp formats within a line
    ("**negrito\nem duas linhas**", "*negrito*\n*em duas linhas*"),
    ("Título em\nduas linhas\n===", "*Título em*\n*duas linhas*"),
    # every HTML entity, not only a handful
    ("Caf&eacute; &#8212; R&#36; 10 &copy;", "Café — R$ 10 ©"),
    ("[x](https://x.com/?a=1&amp;b=2)", "x (https://x.com/?a=1&b=2)"),
    # code in a quote, indented code, code spans padded with spaces WhatsApp would not format
    ("> ```\n> pip install atende\n> ```", "> ```pip install atende```"),
    ("Texto\n\n    código indentado\n\nFim", "Texto\n\n```código indentado```\n\nFim"),
    ("Rode `cut ` e `paste`", "Rode ```cut``` e ```paste```"),
    # a quote's lazy continuation line, an item's second paragraph
    ("> citação\ncontinua", "> citação\n> continua"),
    ("1. Passo\n\n   Detalhe do passo\n\n2. Outro", "1. Passo\n\n   Detalhe do passo\n\n2. Outro"),
    # a link destination in <...> may hold a space, which would end the link in WhatsApp
    ("Veja [a loja](<https://loja.com/a b>)", "Veja a loja (https://loja.com/a%20b)"),
]


@pytest.mark.parametrize("markdown, expected", LIBRARY_CASES)
def test_markdown_the_regexes_misread(markdown, expected):
    assert render_for_whatsapp(markdown) == expected
    assert render_for_whatsapp(expected) == expected


def test_a_model_answer_with_a_list_nested_in_a_numbered_one():
    answer = (
        "Claro! Aqui estão os passos:\n\n"
        "1. **Acesse** https://loja.com.br/conta?ref=wa_bot.\n"
        "2. Clique em *Meus pedidos*:\n"
        "   - pedidos **em aberto**\n"
        "   - pedidos entregues 📦\n"
        "3. Pronto ✅\n\n---\n\n"
        "_Dúvidas?_ Fale com a gente."
    )
    assert render_for_whatsapp(answer) == (
        "Claro! Aqui estão os passos:\n\n"
        "1. *Acesse* https://loja.com.br/conta?ref=wa_bot.\n"
        "2. Clique em _Meus pedidos_:\n"
        "   - pedidos *em aberto*\n"
        "   - pedidos entregues 📦\n"
        "3. Pronto ✅\n\n"
        "_Dúvidas?_ Fale com a gente."
    )


def test_an_html_span_is_written_once_closed_and_dropped_if_never():
    assert render_for_whatsapp("<b>negrito sem fechar") == "negrito sem fechar"
    assert render_for_whatsapp("<b>oi <i>sem fechar</b> fim") == "*oi sem fechar* fim"
    assert render_for_whatsapp('</b>solto <a href="https://x.com"><b>site</b></a>') == "solto *site* (https://x.com)"


def test_a_wide_table_without_rows_keeps_its_header():
    """Found by tests/runtime/whatsapp/test_fuzz_whatsapp.py: a header of more than three columns and no rows rendered as nothing."""
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
