"""What the model is shown of each source: a query-focused excerpt of long chunks."""
from __future__ import annotations

from kb.types import Source
from runtime.prompt import SOURCE_CHARS, excerpt, seen_sources

FILLER = ("A loja foi fundada em 1987 por dois irmãos que vendiam ferramentas na feira. "
          "Com o tempo a família abriu outras lojas na região e passou a vender também pela internet. ")
LONG = FILLER * 4 + ("Em caso de defeito, o cliente deve consultar a assistência técnica autorizada do fabricante. "
                     + "Hoje a empresa tem mais de cem funcionários e atende todo o estado. " * 3)


def test_short_texts_are_shown_whole():
    assert excerpt("Abrimos aos sábados das 9h às 13h.", "sábado") == "Abrimos aos sábados das 9h às 13h."


def test_a_long_chunk_is_cut_around_the_sentences_about_the_query():
    assert len(LONG) > SOURCE_CHARS and LONG.find("assistência técnica") > SOURCE_CHARS
    shown = excerpt(LONG, "Quem devo consultar em caso de defeito?")
    assert "consultar a assistência técnica autorizada do fabricante." in shown  # word forms match (consultar/consultar)
    assert shown.startswith("… ") and len(shown) <= SOURCE_CHARS + 4
    # whole sentences only
    body = shown.removeprefix("… ").removesuffix(" …")
    assert body[0].isupper() and body.endswith(".")


def test_with_nothing_in_common_the_start_is_kept():
    shown = excerpt(LONG, "horário de funcionamento")
    assert shown.startswith("A loja foi fundada em 1987") and shown.endswith(" …")
    assert len(shown) <= SOURCE_CHARS + 2


def test_a_single_overlong_sentence_is_cut_at_a_word_boundary():
    text = "palavra " * 200
    shown = excerpt(text, "palavra")
    assert shown.endswith("palavra …") and len(shown) <= SOURCE_CHARS + 2


def test_seen_sources_renumber_and_keep_what_the_model_saw():
    hits = [Source(rank=4, chunk_id="a", score=0.8, text=LONG, document_id="d", version=1, filename="a.txt"),
            Source(rank=9, chunk_id="b", score=0.7, text="Curto.", document_id="d", version=1, filename="a.txt")]
    shown = seen_sources(hits, "defeito")
    assert [s.rank for s in shown] == [1, 2] and "assistência técnica" in shown[0].text
    assert shown[1].text == "Curto."
