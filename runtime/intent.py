"""What a customer asks for, told from their words before any model runs: whether they want to book,
or to talk to a person (English, Portuguese, Spanish).

Small local models call the tools they are offered: shown ``list_available_slots`` they answer "what
are your Saturday hours?" with a list of free slots, shown ``transfer_to_human`` they hand "where is the
clinic?" to the front desk. These tools are therefore offered only when the customer's recent messages
ask for them.
"""
from __future__ import annotations

import re

from kb.keyword import fold

SCHEDULING_TOOLS = frozenset({"list_available_slots", "schedule_appointment"})
HANDOFF_TOOL = "transfer_to_human"

# on accent-folded, lower-case text; verbs of booking and the words of free times, not "hours" alone
_BOOKING = re.compile(
    r"\b(agend\w*|reagend\w*|marc(ar|o|amos|aria|ando|acao)|remarc\w*|reserv\w*"  # pt/es verbs
    r"|(horarios?|vagas?|datas?) (disponive\w*|livres?|vagos?|disponibles?|para (amanha|hoje|segunda|terca|quarta"
    r"|quinta|sexta|sabado|lunes|martes|miercoles|jueves|viernes|manana))"
    r"|tem (vaga|horario)|ha (vaga|horario)|hay (turno|hora|cita)s?"
    r"|cita|turno|pedir (hora|turno|cita)"  # es
    r"|book\w*|schedul\w*|appointments?|(free|available|open) (slots?|times?|dates?)|slots?)\b"
)


def wants_booking(texts: list[str]) -> bool:
    """True when any of the customer's ``texts`` (the newest message and the few before it, so the
    booking's follow-up "amanhã às 10h" still counts) asks to book, reschedule or see free times."""
    return any(_BOOKING.search(fold(text)) for text in texts)


# a person, a complaint, or a yes to an offered transfer is checked by the caller (see wants_human)
_HUMAN = re.compile(
    r"\b(atendente|humano|humana|pessoa (real|de verdade)|gerente|supervisor\w*|operador\w*|reclama\w*|queixa"
    r"|falar com (alguem|uma pessoa|o responsavel|a recepcao|voces)"  # pt
    # being transferred (pt/es/en), not paying by transfer ("transferencia", "wire transfer")
    r"|transf(erir\w*|ira|iram|iro|ere|erem|eri|eriu|erid[oa]s?|erindo)|transfer (me|us|to)"
    r"|hablar con (alguien|una persona)|agente|persona real|queja|reclamo|encargado"  # es
    r"|human|agent|representative|real person|someone real|manager|complain\w*|(talk|speak) to (someone|somebody"
    r"|a person|staff))\b"
)


def wants_human(texts: list[str]) -> bool:
    """True when any of the customer's ``texts`` asks for a person, a manager or complains."""
    return any(_HUMAN.search(fold(text)) for text in texts)
