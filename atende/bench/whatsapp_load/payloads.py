"""What the benchmark posts: Meta's text-message webhook for numbered customers, signed as Meta signs it."""
from __future__ import annotations

import json
import time

from runtime.whatsapp.webhook import sign

PHONE_ID, SECRET, ADMIN_TOKEN = "106540352200001", "bench-app-secret", "bench-admin-token"
REPLY = "Olá! Recebemos sua mensagem e já vamos ajudar. *Horário*: seg a sex, 9h às 18h."
TEXTS = ["Oi", "Qual o horário?", "Quanto custa a limpeza?", "Vocês atendem sábado?", "Onde fica?", "Obrigado!"]


def customer_id(c: int) -> str:
    return str(5511900000000 + c)


def text_body(wamid: str, customer: str, text: str, ts: int) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": f"Cliente {customer[-4:]}"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": text}}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


def numbered_post(i: int, customers: int, run_id: str) -> tuple[str, bytes, dict[str, str]]:
    """Post ``i`` of a run: customer ``i % customers`` sends the next of TEXTS. Returns (wamid, body, headers)."""
    wamid = f"wamid.bench.{run_id}.{i}"
    text = TEXTS[(i // customers) % len(TEXTS)]
    raw = json.dumps(text_body(wamid, customer_id(i % customers), text, int(time.time()))).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua",
               "X-Hub-Signature-256": sign(raw, SECRET)}
    return wamid, raw, headers
