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


# Asking for a person is a request, not a mention: "are you human?", "human rights", "the General Manager of the
# Broncos", "make a transfer to Philip" ask for nobody. On accent-folded, lower-case text (pt, es, en):
# people who answer for the business, asked for with any verb of wanting or talking ...
_STAFF = (r"(atendentes?|human[oa]s?|humans?|pessoa (real|de verdade)|persona real|real person|someone real|gerente"
          r"|supervisor\w*|operador\w*|operators?|responsavel|encargad[oa]|agentes?|agents?|representatives?"
          r"|managers?|staff|recepcao|recepcion(ista)?|reception(ist)?|front desk|customer (service|support))")
# ... anyone at all, only with a verb of talking ("I need someone to fix my sink" asks for a plumber)
_ANYONE = r"(alguem|uma pessoa|algum(a)? pessoa|alguien|una persona|someone|somebody|a person|anyone|anybody)"
_TALK = (r"(falar|fale|conversar|converse|falo) com|(hablar|hable|comunicar(me)?|conectar(me)?|pasame|pasar(me)?)"
         r" con|(talk|speak|chat) (to|with)|connect (me|us)|put me through")
_WANT = (r"(quero|queria|gostaria|preciso|precisava|chama|chame|chamar|cade|tem|existe|ha|"
         r"quiero|quisiera|necesito|llama|llame|hay|"
         r"want|wanna|need|like|get me|give me|(can|could|may) (i|we) (have|get)|is there|are there)")
_GAP = r"(\W+\w+){0,4}?\W+"  # up to four words between the verb and the person
# ... with an article: "tem um atendente?", "I want the manager"; not "tem todo o ser humano", "a criatividade humana"
_ONE = (r"(um|uma|o|a|algum|alguma|seu|sua|un|una|el|la|algun|alguna|su|an|the|any|some|your)"
        r"( (live|real|actual|verdadeir[oa]|de verdade))? ")
_HUMAN = re.compile(
    rf"\b({_TALK}){_GAP}({_STAFF}|{_ANYONE})\b"
    rf"|\b{_WANT}{_GAP}{_ONE}{_STAFF}\b"
    # being transferred: the one transferred is named ("me transfere", "transfer me", "ser transferido"); not money
    # ("transferir R$ 100 para a Maria", "make a transfer to Philip", "transferencia", "wire transfer")
    r"|\b((me|nos) (\w+ )?transf(erir|ira|iram|ere|erem|eri|iera|ieran|iere|ieren)\w*|transf\w*-(me|nos)"
    r"|transfier[ae](me|nos)|ser transferid[oa]s?|transfer (me|us)|(can|could|may) (i|we) (be|get) transferred)\b"
    r"|\b(reclama(cao|coes|r|ndo)|queixa\w*|queja\w*|reclamo\w*|complain\w*)\b"  # a complaint goes to a person
)
# a message that is only a person asked for ("Atendente", "human please", "agente por favor!")
_ALONE = re.compile(rf"^\W*((um|uma|a|an|un|una|o|the|el|la|falar com|talk to|speak to) )?{_STAFF}"
                    r"(\W+(por favor|please|pls|agora|now|ya|ahora|ja))?\W*$")


def wants_human(texts: list[str]) -> bool:
    """True when any of the customer's ``texts`` asks for a person (someone to talk to, the staff, a manager),
    to be transferred, or complains; a mere mention of people ("are you human?") does not count."""
    return any(_HUMAN.search(t) or _ALONE.match(t) for t in (fold(text).lower() for text in texts))
