"""Choices on WhatsApp: rendered within Meta's limits (checked by the stand-in's own validator), sent through the
outbox as interactive messages, and the customer's tap mapped back to the option; the list-message booking end to
end over the webhook and the Graph API stand-in, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import time
import unicodedata
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from atende.app import create_app
from kb.models import Assistant
from runtime.config import merge_config
from runtime.models import Appointment, Message, ReplyOption, Turn
from runtime.options import Choice, Offered, clean_choices, numbered
from runtime.types import ToolCall
from runtime.whatsapp.interactive import (BODY, BUTTON_TITLE, ROW_DESCRIPTION, ROW_TITLE, render_choices, shorten)
from runtime.whatsapp.standin import GraphStandIn, interactive_problem, sign, tap_body
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import use_scripted_model, wait_until

SECRET, PHONE_ID, CUSTOMER, OTHER = "app-secret-interactive", "106540352249999", "5511987651111", "5511987652222"


def offered(*titles: str, descriptions: tuple = ()) -> list[Offered]:
    return [Offered(f"opt.m{i}", i, t, None, descriptions[i - 1] if i <= len(descriptions) else None)
            for i, t in enumerate(titles, 1)]


# ----------------------------------------------------------------------------------------------- rendering


def test_shorten_cuts_on_a_word_with_an_ellipsis_and_never_inside_a_character():
    assert shorten("Consulta de rotina com o Dr. Silva", 20) == "Consulta de rotina…"
    assert shorten("Manutenção", 20) == "Manutenção"
    assert shorten("Supercalifragilisticexpialidocious", 10) == "Supercali…"
    decomposed = "Ac\u0327a\u0303o especial"  # "Ação" with combining marks: never split from their letter
    for limit in range(2, 9):
        cut = shorten(decomposed, limit)
        kept = cut[:-1]
        assert cut.endswith("…") and len(cut) <= limit and decomposed.startswith(kept)
        assert not unicodedata.combining(decomposed[len(kept)])  # no mark torn from its letter
    family = "👨\u200d👩\u200d👧 Família completa"
    for limit in range(2, 8):
        kept = shorten(family, limit)[:-1]
        assert family.startswith(kept) and not kept.endswith("\u200d") and family[len(kept)] != "\u200d"


@pytest.mark.parametrize("count, kind", [(1, "button"), (3, "button"), (4, "list"), (10, "list")])
def test_up_to_three_short_options_are_buttons_up_to_ten_a_list(count, kind):
    options = offered(*[f"Opção {i} ✨" for i in range(1, count + 1)])
    rendered = render_choices("Qual prefere?", options)
    assert rendered.texts == [] and rendered.interactive["type"] == kind
    assert interactive_problem(rendered.interactive) is None
    assert rendered.interactive["body"]["text"] == "Qual prefere?"


def test_more_than_ten_options_become_a_numbered_list_in_text():
    options = offered(*[f"Horário {h}:00" for h in range(8, 20)])
    rendered = render_choices("Escolha:", options)
    assert rendered.interactive is None
    assert rendered.texts == [numbered("Escolha:", options)] and "12. Horário 19:00" in rendered.texts[0]


def test_no_option_is_plain_text():
    assert render_choices("Olá", []).texts == ["Olá"] and render_choices("Olá", []).interactive is None


def test_long_titles_go_to_a_list_whose_rows_keep_the_full_text_and_stay_distinct():
    titles = ["Limpeza de pele profunda com extração 🧖‍♀️", "Limpeza de pele profunda com peeling",
              "Limpeza de pele profunda com extração e máscara"]
    rendered = render_choices("Qual tratamento?", offered(*titles, descriptions=("60 min",)))
    interactive = rendered.interactive
    assert interactive["type"] == "list" and interactive_problem(interactive) is None
    rows = interactive["action"]["sections"][0]["rows"]
    assert all(len(r["title"]) <= ROW_TITLE for r in rows)
    assert len({r["title"] for r in rows}) == 3  # made distinct after the cut
    assert rows[0]["description"].startswith("Limpeza de pele profunda com extração")
    assert all(len(r["description"]) <= ROW_DESCRIPTION for r in rows)
    assert "60 min" in rows[0]["description"] or rows[0]["description"].endswith("…")


def test_buttons_that_would_be_cut_are_made_distinct_when_a_list_is_not_possible():
    from runtime.whatsapp.interactive import distinct

    titles = distinct(["Atendimento presencial na loja", "Atendimento presencial em casa"], BUTTON_TITLE)
    assert all(len(t) <= BUTTON_TITLE for t in titles) and titles[0] != titles[1] and titles[1].endswith("(2)")


def test_a_body_too_long_for_an_interactive_message_goes_as_text_first():
    long_text = "Temos várias opções de atendimento. " * 40
    rendered = render_choices(long_text.strip(), offered("Sim", "Não"), prompt="Quer agendar?")
    assert rendered.texts == [long_text.strip()] and len(long_text) > BODY
    assert rendered.interactive["body"]["text"] == "Quer agendar?" and interactive_problem(rendered.interactive) is None
    rendered = render_choices("", offered("Sim", "Não"))
    assert rendered.interactive["body"]["text"] == "Escolha uma opção:"


def test_choices_are_cleaned_of_blanks_repeats_and_excess():
    assert clean_choices(["  Sim ", "sim", "", "   ", "Não"]) == [Choice("Sim"), Choice("Não")]
    assert len(clean_choices([f"o{i}" for i in range(100)])) == 30
    assert clean_choices([{"title": "10:00", "value": "2026-12-02 10:00"}]) == [Choice("10:00", "2026-12-02 10:00")]


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def wa(tmp_path, embedders, database_url):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.2)
        model = use_scripted_model(services)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "clinica"}).raise_for_status()
            with services.session() as session:
                assistant = session.scalars(select(Assistant)).one()
                assistant.config = merge_config({}, {
                    "tools": ["list_available_slots", "schedule_appointment", "offer_options"],
                    "scheduling": {"availability": {d: [["09:00", "12:00"]] for d in range(7)}}})
                session.commit()
            client.post("/api/whatsapp/senders", json={
                "assistant_id": "clinica", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-i", "app_secret": SECRET, "verify_token": "v"}).raise_for_status()
            yield client, services, model, graph
        services.engine.dispose()


def post(client, body: dict) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def text(wamid: str, body: str, customer: str = CUSTOMER) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                           "text": {"body": body}}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


def tap(wamid: str, option_id: str, title: str, customer: str = CUSTOMER, kind: str = "list_reply") -> dict:
    return tap_body(PHONE_ID, customer, wamid, option_id, title, kind=kind, display_phone_number="15550001111")


def last_user_text(model) -> str:
    return next(m["content"] for m in reversed(model.requests[-1].messages) if m["role"] == "user")


def test_a_list_message_booking_end_to_end(wa):
    """The customer asks for a slot -> the model lists the day's slots -> a WhatsApp list message with them as rows
    -> the customer taps one -> the turn reads the choice with its value -> schedule_appointment books it."""
    client, services, model, graph = wa
    day = (datetime.now(ZoneInfo("America/Sao_Paulo")) + timedelta(days=2)).date().isoformat()
    model.enqueue([ToolCall("c1", "list_available_slots", {"date": day})], "Qual horário prefere?")
    post(client, text("wamid.b1", f"Quero marcar uma consulta no dia {day}"))
    sent = wait_until(lambda: graph.sent, what="the list message")[0]["json"]
    assert sent["type"] == "interactive" and interactive_problem(sent["interactive"]) is None
    rows = sent["interactive"]["action"]["sections"][0]["rows"]
    assert sent["interactive"]["type"] == "list" and sent["interactive"]["body"]["text"] == "Qual horário prefere?"
    assert [r["title"] for r in rows] == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]
    chosen = rows[2]

    def book(messages, tools):
        said = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        assert said.endswith(f"\nThe customer chose: 10:00 (value: {day} 10:00)"), said
        return [ToolCall("c2", "schedule_appointment", {"start": f"{day} 10:00", "name": "Ana", "confirmed": True})]
    model.enqueue(book, "Agendado para as 10:00!")
    post(client, tap("wamid.b2", chosen["id"], chosen["title"]))
    wait_until(lambda: len(graph.sent) == 2, what="the confirmation")
    assert graph.sent[1]["json"]["text"]["body"] == "Agendado para as 10:00!"
    with services.session() as session:
        appointment = session.scalars(select(Appointment)).one()
        local = appointment.starts_at.astimezone(ZoneInfo("America/Sao_Paulo"))
        assert (appointment.status, local.strftime("%Y-%m-%d %H:%M"), appointment.name) == ("booked", f"{day} 10:00", "Ana")
        option = session.scalars(select(ReplyOption).where(ReplyOption.option_id == chosen["id"])).one()
        assert option.chosen_at is not None and option.value == f"{day} 10:00"
    print(f"\nlist-message booking: rows {[r['title'] for r in rows]}; tapped {chosen['title']!r} "
          f"({chosen['id']}); booked {local:%Y-%m-%d %H:%M} for {appointment.name}, status {appointment.status}")


def test_buttons_tap_redelivered_twice_gets_one_turn_and_typed_numbers_count(wa):
    client, services, model, graph = wa
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["Sim, quero 😀", "Não, obrigado"],
                                                    "prompt": "Deseja agendar?"})], "Deseja agendar agora?")
    post(client, text("wamid.o1", "Vocês fazem clareamento dental?"))
    sent = wait_until(lambda: graph.sent)[0]["json"]["interactive"]
    assert sent["type"] == "button" and [b["reply"]["title"] for b in sent["action"]["buttons"]] == \
        ["Sim, quero 😀", "Não, obrigado"]
    button = sent["action"]["buttons"][1]["reply"]
    model.enqueue("Tudo bem!")
    body = tap("wamid.o2", button["id"], button["title"], kind="button_reply")
    for _ in range(2):
        post(client, body)
    wait_until(lambda: len(graph.sent) == 2)
    time.sleep(1.0)  # time for a (wrong) second turn
    assert len(graph.sent) == 2 and last_user_text(model).endswith("\nThe customer chose: Não, obrigado")
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Turn)) == 2
    # a new offer answered by typing its number
    model.enqueue([ToolCall("c3", "offer_options", {"options": ["Manhã", "Tarde", "Noite"]})], "Qual período?")
    post(client, text("wamid.o3", "Quero ver os horários de atendimento"))
    wait_until(lambda: len(graph.sent) == 3)
    model.enqueue("Certo, à tarde.")
    post(client, text("wamid.o4", "2"))
    wait_until(lambda: len(graph.sent) == 4)
    assert last_user_text(model).endswith("\nThe customer chose: Tarde")


def test_a_tap_on_an_option_never_offered_or_of_another_conversation_is_not_taken_as_a_choice(wa):
    client, services, model, graph = wa
    model.enqueue([ToolCall("c1", "offer_options", {"options": ["Plano A", "Plano B"]})], "Qual plano?")
    post(client, text("wamid.x1", "Quais planos vocês têm?", customer=OTHER))
    other = wait_until(lambda: graph.sent)[0]["json"]["interactive"]["action"]["buttons"][0]["reply"]
    model.enqueue("Resposta 1.", "Resposta 2.")
    post(client, tap("wamid.x2", other["id"], other["title"], kind="button_reply"))  # another customer's option
    wait_until(lambda: len(graph.sent) == 2)
    assert "The customer chose" not in last_user_text(model)
    post(client, tap("wamid.x3", "opt.forged.1", "Plano Z", kind="button_reply"))  # never offered
    wait_until(lambda: len(graph.sent) == 3)
    assert "The customer chose" not in last_user_text(model) and "Plano Z" in last_user_text(model)
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(ReplyOption)
                              .where(ReplyOption.chosen_at.is_not(None))) == 0


def test_a_menu_is_offered_at_the_start_and_on_request(wa):
    client, services, model, graph = wa
    with services.session() as session:
        assistant = session.scalars(select(Assistant)).one()
        assistant.config = merge_config(assistant.config, {"menu": {"prompt": "Como posso ajudar?", "options": [
            {"title": "Agendar consulta", "value": "booking"}, {"title": "Preços"}, {"title": "Falar com atendente"},
            {"title": "Endereço e horário de funcionamento da clínica"}]}})
        session.commit()
    post(client, text("wamid.m1", "Oi"))
    first = wait_until(lambda: graph.sent)[0]["json"]
    assert first["type"] == "interactive" and first["interactive"]["type"] == "list"
    model.enqueue("Vamos agendar.")
    row = first["interactive"]["action"]["sections"][0]["rows"][0]
    post(client, tap("wamid.m2", row["id"], row["title"]))
    wait_until(lambda: len(graph.sent) == 2)
    assert last_user_text(model).endswith("\nThe customer chose: Agendar consulta (value: booking)")
    post(client, text("wamid.m3", "Menu"))
    menu = wait_until(lambda: len(graph.sent) == 3 and graph.sent[2])["json"]
    assert menu["interactive"]["body"]["text"] == "Como posso ajudar?"

    def all_sent() -> bool:
        with services.session() as session:
            statuses = session.scalars(select(Message.status).where(Message.direction == "outbound")).all()
            return len(statuses) == 3 and set(statuses) == {"sent"}
    wait_until(all_sent, what="the three replies recorded as sent")
