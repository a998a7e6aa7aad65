"""Per-assistant conversation configuration: data in the database, edited through the admin API."""
from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kb.embedders import default_min_score
from kb.keyword import message_language

DEFAULT_SYSTEM_PROMPT = (
    "Você é o assistente virtual de {{business_name}}. Responda sempre no idioma do cliente, com "
    "cordialidade e objetividade, usando apenas as informações das fontes fornecidas."
)
DEFAULT_TEXT_INSTRUCTIONS = (
    "You are writing a chat message (WhatsApp). Use short paragraphs of 1-3 sentences, *bold* for key facts, "
    "'- ' bullets for lists. Never use tables, headings or links in markdown syntax. Keep replies under 120 words."
)
# built-in replies, in the customer's language, for assistants that do not set their own
DEFAULT_HANDOFF = {
    "en": "I'm passing you to a human agent, who will reply here shortly.",
    "pt": "Vou passar você para um atendente, que responde por aqui em instantes.",
    "es": "Te paso con un agente, que te responderá por aquí en breve.",
}
DEFAULT_FALLBACK = {
    "en": "I could not find this in my knowledge base, so I won't guess. Would you like me to transfer you to a "
          "human agent?",
    "pt": "Não encontrei essa informação na minha base de conhecimento e prefiro não arriscar. Quer que eu passe "
          "você para um atendente?",
    "es": "No encontré esta información en mi base de conocimiento y prefiero no adivinar. ¿Quieres que te pase "
          "con un agente?",
}
DEFAULT_UNAVAILABLE = {
    "en": "Sorry, I can't answer right now. Your message is saved and someone from our team will get back to you "
          "here.",
    "pt": "Desculpe, não consigo responder agora. Sua mensagem ficou registrada e alguém da nossa equipe vai "
          "retornar por aqui.",
    "es": "Lo siento, no puedo responder ahora. Tu mensaje quedó registrado y alguien de nuestro equipo te "
          "responderá por aquí.",
}
DEFAULT_AI_BACK = {
    "en": "You are talking to the virtual assistant again.",
    "pt": "Você está falando de novo com o assistente virtual.",
    "es": "Estás hablando de nuevo con el asistente virtual.",
}
# outside business hours (runtime.followups): {opening} is when a person will answer, in the customer's language
DEFAULT_CALLBACK = {
    "closed": {"en": "Our team is away right now: a person will answer you here {opening}.",
               "pt": "Nossa equipe não está disponível agora: uma pessoa vai te responder por aqui {opening}.",
               "es": "Nuestro equipo no está disponible ahora: una persona te responderá por aquí {opening}."},
    "ask_name": {"en": "So we can call you back, what is your name?",
                 "pt": "Para retornarmos o contato, qual é o seu nome?",
                 "es": "Para devolverte el contacto, ¿cuál es tu nombre?"},
    "ask_best_time": {"en": "What is the best time to call you?",
                      "pt": "Qual o melhor horário para te ligarmos?",
                      "es": "¿Cuál es el mejor horario para llamarte?"},
    "ask_phone": {"en": "Which phone number should we call?",
                  "pt": "Em qual número de telefone podemos te ligar?",
                  "es": "¿A qué número de teléfono te llamamos?"},
    "invalid_phone": {"en": "I could not read that phone number. Please send it with the area code.",
                      "pt": "Não consegui ler esse número. Envie o telefone com o DDD, por favor.",
                      "es": "No pude leer ese número. Envíalo con el código de área, por favor."},
    "done": {"en": "Thank you! A person will get back to you {opening}.",
             "pt": "Obrigado! Uma pessoa vai retornar o contato {opening}.",
             "es": "¡Gracias! Una persona se pondrá en contacto contigo {opening}."},
}
TOOL_NAMES = ("search_knowledge_base", "transfer_to_human", "collect_data", "list_available_slots", "schedule_appointment",
              "offer_options", "send_file")
# booking writes to the business's calendar: an assistant enables the scheduling tools explicitly
DEFAULT_TOOLS = ("search_knowledge_base", "transfer_to_human", "collect_data")
FieldType = Literal["email", "phone", "date", "number", "enum", "regex", "cpf", "cnpj", "text"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_NOTE = re.compile(r"\[The customer [^\[\]]*\]")  # runtime.whatsapp.webhook's notes on what was sent


class RetrievalConfig(BaseModel):
    mode: Literal["every_turn", "as_tool"] = "every_turn"
    top_k: int = Field(default=3, ge=1, le=20)
    # chunks less similar to the question are not shown to the model; None: the embedding model's
    # calibrated default (kb.embedders.MIN_SCORE)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)

    def threshold(self, model: str) -> float:
        """``min_score``, or the calibrated one of the embedding ``model`` when unset."""
        return default_min_score(model) if self.min_score is None else self.min_score


class ApprovedAnswersConfig(BaseModel):
    """How reviewers' approved answers are used (see runtime.approved)."""

    # reply: a message matching an approved question gets the approved text, with no model call;
    # source: the approved answer is given to the model as its first source; off: not used
    mode: Literal["reply", "source", "off"] = "reply"
    # least similarity to an approved question; None: the embedding model's calibrated rule
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class DataField(BaseModel):
    """A piece of customer data the assistant may collect with ``collect_data``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,49}$")
    type: FieldType = "text"
    description: str = ""
    options: list[str] = Field(default_factory=list, description="allowed values for type enum")
    pattern: str | None = Field(default=None, description="regular expression for type regex")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v


# URL placeholders: {{bound}} ones the runtime fills from the conversation, {param} ones from the model's arguments
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
BOUND_NAME = re.compile(r"^(customer\.(id|phone)|variables\.[A-Za-z_][A-Za-z0-9_]{0,49}|data\.[a-z][a-z0-9_]{0,49})$")


class HttpTool(BaseModel):
    """A lookup in the customer's own systems, defined as data."""

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_]{0,49}$")
    description: str
    url: str = Field(description="{param}: filled from the model's arguments (one encoded path segment); "
                                 "{{customer.id}}, {{customer.phone}}, {{variables.NAME}}, {{data.FIELD}}: filled "
                                 "by the runtime from the conversation, never by the model")
    method: Literal["GET", "POST"] = "GET"
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}}, description="JSON schema")
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    credential: str | None = Field(default=None, description="name of an entry in ATENDE_HTTP_TOOL_CREDENTIALS")
    max_response_bytes: int = Field(default=16_000, ge=256, le=1_000_000)

    @property
    def bound_names(self) -> list[str]:
        """The runtime-filled placeholders of the URL, e.g. ``["customer.phone"]``."""
        return [bound for bound, param in PLACEHOLDER.findall(self.url) if not param]

    @property
    def model_names(self) -> list[str]:
        """The model-filled ``{param}`` placeholders of the URL."""
        return [param for _, param in PLACEHOLDER.findall(self.url) if param]

    @field_validator("url")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        for bound, param in PLACEHOLDER.findall(v):
            if not param and not BOUND_NAME.match(bound):
                raise ValueError(f"unknown placeholder {{{{{bound}}}}}: use {{{{customer.id}}}}, {{{{customer.phone}}}}, "
                                 "{{variables.NAME}} or {{data.FIELD}}")
        return v


class Scheduling(BaseModel):
    timezone: str = "America/Sao_Paulo"
    slot_minutes: int = Field(default=30, ge=5, le=480)
    # weekday (0 = Monday) -> list of ["HH:MM", "HH:MM"] opening windows, in ``timezone``
    availability: dict[int, list[tuple[str, str]]] = Field(
        default_factory=lambda: {d: [("09:00", "12:00"), ("13:00", "18:00")] for d in range(5)}
    )
    horizon_days: int = Field(default=30, ge=1, le=365)
    # one conversation cannot fill the calendar; a human agent can book more
    max_bookings_per_conversation: int = Field(default=1, ge=1, le=50)

    @field_validator("availability")
    @classmethod
    def _windows(cls, v: dict) -> dict:
        for day, windows in v.items():
            if not 0 <= int(day) <= 6:
                raise ValueError("weekday keys are 0 (Monday) to 6 (Sunday)")
            for start, end in windows:
                if not (_HHMM.match(start) and _HHMM.match(end)) or start >= end:
                    raise ValueError(f"bad window {start}-{end}: use HH:MM and start < end")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return known_time_zone(v)


def known_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone; raises ValueError otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as America/Sao_Paulo") from exc
    return name


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM_END = re.compile(r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")
CALLBACK_MESSAGES = ("closed", "ask_name", "ask_best_time", "ask_phone", "invalid_phone", "done")


class BusinessHours(BaseModel):
    """When people answer (runtime.business_hours): outside these hours a handoff tells the customer when a
    person will, collects callback details and leaves a follow-up for the opening (runtime.followups)."""

    timezone: str = Field(default="America/Sao_Paulo", description="IANA time zone the hours are in")
    weekly: dict[int, list[tuple[str, str]]] = Field(
        default_factory=lambda: {d: [("09:00", "18:00")] for d in range(5)},
        description='weekday (0 or "mon" = Monday ... 6 or "sun") -> ["HH:MM", "HH:MM"] intervals, local time; an '
                    'end before its start runs past midnight ("22:00", "02:00"), "24:00" ends at midnight; a day '
                    "left out is closed")
    holidays: list[date] = Field(default_factory=list, description="local dates closed all day (YYYY-MM-DD)")
    reminder_template: str | None = Field(
        default=None, description="approved WhatsApp template sent at the opening when the customer's 24-hour "
                                  "window will have closed by then; none: no reminder (the follow-up says so)")
    reminder_parameters: list[str] = Field(
        default_factory=list, description="the template's {{1}}, {{2}} ...; may use {name}, {best_time}, {phone}, "
                                          "{opening} (the collected details and the opening, in the customer's "
                                          "language)")
    messages: dict[str, str] = Field(
        default_factory=dict, description=f"replaces built-in texts (en, pt, es) by key: {', '.join(CALLBACK_MESSAGES)}"
                                          "; closed and done may use {opening}")

    def message(self, kind: str, language: str | None) -> str:
        """The configured text for ``kind`` (one of ``CALLBACK_MESSAGES``), else the built-in one in ``language``
        (else English)."""
        return self.messages.get(kind) or DEFAULT_CALLBACK[kind][language or "en"]

    @field_validator("weekly", mode="before")
    @classmethod
    def _weekday_names(cls, v):
        if isinstance(v, dict):
            return {WEEKDAYS.index(k.lower()[:3]) if isinstance(k, str) and k.lower()[:3] in WEEKDAYS else k: w
                    for k, w in v.items()}
        return v

    @field_validator("weekly")
    @classmethod
    def _intervals(cls, v: dict) -> dict:
        for day, intervals in v.items():
            if not 0 <= int(day) <= 6:
                raise ValueError("weekday keys are 0 (Monday) to 6 (Sunday), or mon ... sun")
            for start, end in intervals:
                if not (_HHMM.match(start) and _HHMM_END.match(end)) or start == end:
                    raise ValueError(f"bad interval {start}-{end}: use HH:MM (end up to 24:00), start and end differ")
        if not any(v.values()):
            raise ValueError("no opening hours: give at least one interval")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return known_time_zone(v)

    @field_validator("messages")
    @classmethod
    def _known_messages(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(CALLBACK_MESSAGES))
        if unknown:
            raise ValueError(f"unknown messages {unknown}; known: {list(CALLBACK_MESSAGES)}")
        return v


class HandoffConfig(BaseModel):
    """When a conversation goes to a person and when it comes back to the AI (see runtime.handoff)."""

    request_phrases: list[str] = Field(
        default_factory=list, description="phrases that, in the customer's message, ask for a person (besides the "
                                          "built-in ones in en, pt, es); matched without case or accents")
    after_fallbacks: int = Field(
        default=2, ge=0, le=20, description="hand off after this many fallback replies in a row; 0: never")
    idle_return_minutes: float = Field(
        default=60, ge=0, le=7 * 24 * 60, description="a conversation with no operator message for this long goes "
                                                      "back to the AI; 0: never")
    ai_back_message: str | None = Field(
        default=None, description="told to the customer when the AI answers again; default: built-in (en, pt, es)")
    business_hours: BusinessHours | None = Field(
        default=None, description="when people answer; outside them a handoff collects callback details and leaves "
                                  "a follow-up for the opening; none: always open")
    close_message: str | None = Field(
        default=None, max_length=4096, description="told to the customer when an operator closes the conversation; "
                                                   "none (the default): nothing is sent")
    on_image: bool = Field(
        default=False, description="hand the conversation to a person when the customer sends an image (no local "
                                   "model reads images; its caption is still the text): e.g. photos of damage, "
                                   "receipts")


def merge_config(stored: dict, changes: dict) -> dict:
    """Stored config with the given top-level keys replaced, validated; raises InvalidRequest."""
    from pydantic import ValidationError

    from core.errors import InvalidRequest

    try:
        return AssistantConfig.model_validate({**stored, **changes}).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid config: {problems}") from exc


class WidgetConfig(BaseModel):
    """The embeddable web chat: where it may run and how fast anonymous visitors may use it.

    Every limit is counted in the database (``runtime.ratelimit``), so it holds across server processes.
    """

    allowed_origins: list[str] = Field(
        default_factory=list, description="websites that may embed the widget, e.g. https://shop.example; the "
                                          "server's own pages (dashboard, demo) always may; \"*\" = any website")
    rate_limit_per_minute: int = Field(default=10, ge=1, le=600, description="messages per visitor per minute")
    ip_messages_per_minute: int = Field(default=30, ge=1, le=10_000, description="messages per client address per minute")
    ip_sessions_per_hour: int = Field(default=30, ge=1, le=10_000, description="new visitors per client address per hour")
    assistant_messages_per_minute: int = Field(default=120, ge=1, le=100_000,
                                               description="messages to this assistant's widget per minute, all visitors")
    assistant_sessions_per_hour: int = Field(default=600, ge=1, le=1_000_000,
                                             description="new visitors of this assistant's widget per hour")
    title: str = "Chat"
    greeting: str = ""


class MenuOption(BaseModel):
    """One entry of an assistant's menu: what the customer reads, and what it stands for (told to the turn)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=500)
    value: str | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=500)


class MenuConfig(BaseModel):
    """Choices the assistant offers at the start of a conversation (``at_start``) and whenever the customer sends
    one of ``keywords`` alone (runtime.options: buttons or a list on WhatsApp, buttons in the widget)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(default="", max_length=1024, description="the menu's text; default: 'Choose an option:' in "
                                                                 "the customer's language")
    options: list[MenuOption] = Field(min_length=1, max_length=30)
    at_start: bool = True
    keywords: list[str] = Field(default_factory=lambda: ["menu", "menú", "opções", "opciones", "options"])


class RetentionConfig(BaseModel):
    """How long an assistant's conversations and the raw WhatsApp webhook bodies naming its numbers are kept
    (``runtime.retention``, run by the queue's scheduler)."""

    model_config = ConfigDict(extra="forbid")

    conversations_days: int | None = Field(
        default=None, ge=1, le=36_500, description="a conversation with no message for this many days is deleted or "
                                                   "anonymised (``action``); none: kept")
    action: Literal["anonymise", "delete"] = Field(
        default="anonymise", description="anonymise: the conversation stays as figures (kinds, times, tokens, costs, "
                                         "ratings, sources) without a word of it or the customer's id; delete: gone")
    webhook_bodies_days: int | None = Field(
        default=None, ge=1, le=36_500, description="raw webhook bodies naming the assistant's numbers are emptied "
                                                   "after this many days; default: ATENDE_WEBHOOK_BODY_RETENTION_DAYS "
                                                   "(and never later than conversations_days)")


class AssistantConfig(BaseModel):
    """Everything that shapes an assistant's replies; stored as JSON on the assistant."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    text_channel_instructions: str = DEFAULT_TEXT_INSTRUCTIONS
    fallback_message: str | None = Field(
        default=None, description="sent when the sources do not answer; default: a built-in one in the customer's "
                                  "language (en, pt, es)")
    handoff_message: str | None = Field(
        default=None, description="sent when a handoff turn has no text of its own; default: built-in, as above")
    unavailable_message: str | None = Field(
        default=None, description="sent when the chat model fails (the conversation is flagged for a person); "
                                  "default: built-in, as above")
    model: str | None = Field(default=None, description="chat model name; default from settings")
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=256, ge=16, le=4096)
    tools: list[str] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    approved_answers: ApprovedAnswersConfig = Field(default_factory=ApprovedAnswersConfig)
    grounded_fallback: bool = Field(
        default=True, description="when the model gives no answer but the best source matches confidently, quote "
                                  "its closest sentence with the document's name instead of the fallback")
    focused_answers: bool = Field(
        default=True, description="a question whose best source matches confidently is first put to the model with "
                                  "only the sources (no tools); the whole prompt runs when that gives no supported answer")
    history_messages: int = Field(default=8, ge=0, le=50)
    max_tool_rounds: int = Field(default=3, ge=1, le=10)
    turn_deadline_s: float = Field(default=180.0, gt=0, le=900)
    handoff_url: str | None = None
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    data_fields: list[DataField] = Field(default_factory=list)
    http_tools: list[HttpTool] = Field(default_factory=list)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    widget: WidgetConfig = Field(default_factory=WidgetConfig)
    menu: MenuConfig | None = None
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    mask_personal_data: bool = Field(
        default=False, description="the chat model is shown placeholders ([CPF_1], [EMAIL_1], [PHONE_1]...) instead of "
                                   "the customer's CPF, CNPJ, e-mail addresses and phone numbers; its reply and tool "
                                   "arguments get the real values back (runtime.pseudonyms)")

    def canned_reply(self, kind: Literal["fallback", "handoff", "unavailable", "ai_back"], texts: list[str]) -> str:
        """The configured fallback/handoff/unavailable/AI-is-back message, or the built-in one in the language of
        ``texts`` (the customer's new message first, then earlier ones), else of the system prompt, else English."""
        configured, builtin = {"fallback": (self.fallback_message, DEFAULT_FALLBACK),
                               "handoff": (self.handoff_message, DEFAULT_HANDOFF),
                               "unavailable": (self.unavailable_message, DEFAULT_UNAVAILABLE),
                               "ai_back": (self.handoff.ai_back_message, DEFAULT_AI_BACK)}[kind]
        return configured or builtin[self.language(texts) or "en"]

    def language(self, texts: list[str]) -> str | None:
        """The customer's language (en, pt, es) told by ``texts`` (newest first), else the system prompt's."""
        return self.customer_language(texts) or message_language(self.system_prompt)

    @staticmethod
    def customer_language(texts: list[str]) -> str | None:
        """The language (en, pt, es) the customer's own ``texts`` (newest first) tell, or None when none does
        ("Refund status?", "Ok"): a reply is held to it only then. Our bracketed notes ("[The customer sent a
        voice message]") say nothing of the customer's language."""
        return next(filter(None, (message_language(_NOTE.sub(" ", text)) for text in texts)), None)

    @field_validator("http_tools")
    @classmethod
    def _unique_tool_names(cls, v: list[HttpTool]) -> list[HttpTool]:
        names = [t.name for t in v]
        clashes = sorted({n for n in names if names.count(n) > 1 or n in TOOL_NAMES})
        if clashes:
            raise ValueError(f"HTTP tool names must be unique and differ from the built-in tools: {clashes}")
        return v

    @model_validator(mode="after")
    def _bound_data_fields(self) -> AssistantConfig:
        fields = {f.name: f for f in self.data_fields}
        for tool in self.http_tools:
            for name in tool.bound_names:
                if name.startswith("data."):
                    field = fields.get(name[5:])
                    if field is None or field.type == "text":
                        raise ValueError(f"{tool.name}: {{{{{name}}}}} must name a data field with a validated type "
                                         f"(not text); fields: {', '.join(fields) or 'none'}")
            clash = sorted(set(tool.model_names) & {n.rsplit(".", 1)[1] for n in tool.bound_names})
            if clash:
                raise ValueError(f"{tool.name}: {clash} is filled by the runtime ({{{{...}}}}) and by the model ({{...}}); keep one")
        return self

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(TOOL_NAMES)
        if unknown:
            raise ValueError(f"unknown tools {sorted(unknown)}; built-in tools are {list(TOOL_NAMES)} (HTTP tools go in http_tools)")
        return v
