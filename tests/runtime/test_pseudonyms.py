"""Masking before the model (runtime.pseudonyms): the model is shown placeholders, never a customer's CPF, e-mail or
phone number, and the placeholders it writes become the real values in the reply and in the tools' arguments; on
SQLite and PostgreSQL through the turn engine."""
from __future__ import annotations

from sqlalchemy import select

from runtime.models import CollectedData
from runtime.pseudonyms import Vault
from runtime.types import ToolCall
from tests.factories import add_assistant, chat

CPF, EMAIL, PHONE = "123.456.789-09", "joana.prado@example.com", "+55 11 98765-4321"


def test_a_vault_hides_and_reveals_each_value_under_one_placeholder():
    vault = Vault()
    hidden = vault.hide(f"CPF {CPF}, e-mail {EMAIL}, de novo {CPF}, fone {PHONE}")
    assert hidden == "CPF [CPF_1], e-mail [EMAIL_1], de novo [CPF_1], fone [PHONE_1]"
    assert vault.hide("outro 529.982.247-25") == "outro [CPF_2]"
    # a model may drop the brackets; a placeholder this turn never gave stays as it is
    assert vault.reveal("Anotei CPF_1 e [EMAIL_1]; [CPF_9]") == f"Anotei {CPF} e {EMAIL}; [CPF_9]"
    assert vault.reveal_json({"value": "[PHONE_1]", "n": 3}) == {"value": PHONE, "n": 3}
    assert Vault().hide("Sem dados pessoais, pedido 12345.") == "Sem dados pessoais, pedido 12345."


def test_the_model_never_sees_the_customers_data_and_the_tools_get_it(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja", config={
        "mask_personal_data": True,
        "system_prompt": "Você atende a Loja Exemplo. Telefone do cliente: {{phone}}.",
        "data_fields": [{"name": "cpf", "type": "cpf"}, {"name": "email", "type": "email"}]})
    model.enqueue([ToolCall("call_0", "collect_data", {"field": "email", "value": "[EMAIL_1]"})],
                  "Anotado: CPF [CPF_1] e e-mail [EMAIL_1]. Ligaremos para [PHONE_1].")
    r = chat(services, aid, f"Meu CPF é {CPF} e meu e-mail é {EMAIL}. Podem me ligar?", variables={"phone": PHONE})
    assert r.reply == f"Anotado: CPF {CPF} e e-mail {EMAIL}. Ligaremos para {PHONE}."
    seen = "\n".join(str(m) for request in model.requests for m in request.messages)
    assert "[CPF_1]" in seen and "[EMAIL_1]" in seen and "[PHONE_1]" in seen
    for value in (CPF, "12345678909", EMAIL, "98765-4321", "987654321"):
        assert value not in seen, value
    with services.session() as session:
        saved = {d.field: d.value for d in session.scalars(select(CollectedData))}
    assert saved == {"cpf": CPF, "email": EMAIL}
    assert [c["arguments"] for c in r.function_calls if c["name"] == "collect_data"][-1] == \
        {"field": "email", "value": EMAIL}


def test_without_the_setting_the_model_is_shown_the_text_as_written(scripted_model):
    services, model = scripted_model
    aid = add_assistant(services, "loja")
    model.enqueue("Certo.")
    chat(services, aid, f"Meu e-mail é {EMAIL}")
    assert EMAIL in model.requests[0].messages[-1]["content"]
