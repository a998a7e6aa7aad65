"""What may reach a customer: small talk told apart from questions, model replies checked before they
are sent (markup, empty text, echoes of the prompt, the wrong language) and replies that only say the
knowledge base has no answer recognised as fallbacks, in English, Portuguese and Spanish."""
from __future__ import annotations

import json
import re
from typing import Literal

from kb.keyword import detect_language, fold, key_terms, message_language, words

SmallTalk = Literal["greeting", "thanks", "goodbye"]
LANGUAGE_NAMES = {"en": "English", "pt": "Portuguese", "es": "Spanish"}

# small talk: a message made only of these words, with at least one anchor (which also tells the language)
_ANCHORS: dict[str, tuple[SmallTalk, str]] = {
    **{w: ("greeting", "pt") for w in ("oi", "ola", "opa", "oie", "eai", "alo", "bom dia", "boa tarde", "boa noite")},
    **{w: ("greeting", "en") for w in ("hello", "hi", "hey", "hiya", "howdy", "good morning", "good afternoon",
                                       "good evening", "greetings")},
    **{w: ("greeting", "es") for w in ("hola", "buenos dias", "buenas tardes", "buenas noches", "buenas", "saludos")},
    **{w: ("thanks", "pt") for w in ("obrigado", "obrigada", "brigado", "brigada", "valeu", "agradeco", "grato", "grata")},
    **{w: ("thanks", "en") for w in ("thanks", "thank you", "thx", "ty", "cheers")},
    **{w: ("thanks", "es") for w in ("gracias",)},
    **{w: ("goodbye", "pt") for w in ("tchau", "ate logo", "ate mais", "ate breve", "falou")},
    **{w: ("goodbye", "en") for w in ("bye", "goodbye", "see you", "see ya")},
    **{w: ("goodbye", "es") for w in ("adios", "hasta luego", "hasta pronto", "chau", "chao")},
}
_FILLERS = frozenset(
    "world mundo there all everyone everybody folks pessoal gente todos amigo amiga friend tudo bem bom boa "
    "como vai vc voce voces how are you doing que tal estas esta usted e and y muito much so lot very muchas "
    "muito mil ok okay certo perfeito otimo great perfect vale bueno por pela pelo for the a o ajuda help ayuda "
    "entao so pues ne".split()
)
_MAX_SMALL_TALK_WORDS = 8

SMALL_TALK_REPLIES: dict[SmallTalk, dict[str, str]] = {
    "greeting": {"en": "Hello! How can I help you today?", "pt": "Olá! Como posso ajudar você hoje?",
                 "es": "¡Hola! ¿En qué puedo ayudarte hoy?"},
    "thanks": {"en": "You're welcome! If you need anything else, just ask.",
               "pt": "Por nada! Se precisar de mais alguma coisa, é só chamar.",
               "es": "¡De nada! Si necesitas algo más, aquí estoy."},
    "goodbye": {"en": "Goodbye! Write to us anytime.", "pt": "Até logo! Quando precisar, é só chamar.",
                "es": "¡Hasta luego! Escríbenos cuando lo necesites."},
}

# what the customer is told about the data they sent when the model gives no usable reply
DATA_REPLIES: dict[str, dict[str, str]] = {
    "saved": {"en": "Noted ({field}: {value}).", "pt": "Anotado ({field}: {value}).",
              "es": "Anotado ({field}: {value})."},
    "refused": {"en": "The {field} you sent ({value}) is not valid. Could you check it and send it again?",
                "pt": "O {field} que você enviou ({value}) não é válido. Pode conferir e enviar de novo?",
                "es": "El {field} que enviaste ({value}) no es válido. ¿Puedes revisarlo y enviarlo de nuevo?"},
}

# a reply that only says the sources have no answer (checked on the accent-folded text)
_NOT_FOUND = re.compile(
    r"\bnao (encontrei|achei|localizei)\b|\bnao (tenho|possuo|temos|ha) (essa |esta |a |nenhuma |)informac"
    r"|\bnao (sei|consigo) (informar|dizer|responder)|\bnao consta\b|\bsem informac(ao|oes) sobre"
    r"|\b(couldn't|could not|can't|cannot|didn't|did not|unable to) (find|locate)\b"
    r"|\b(don't|do not|doesn't|does not) have (that|this|any|the|enough|specific) (information|info|details)"
    r"|\bi (don't|do not) know\b|\bno information (about|on|regarding)\b"
    r"|\bnot (mentioned|available|covered|provided|included) in (the|my|our)\b"
    r"|\bno (encontre|halle)\b|\bno (tengo|dispongo de|tenemos) (esa |esta |la |)informac"
    r"|\bno (se|puedo) (decir|responder|informar)\b|\bno pude encontrar\b",
)
# what only the model's machinery writes: tool-call tags, chat-template tokens, fences, JSON calls
_MARKUP = re.compile(
    r"</?\s*(tools?|tool_calls?|tool_response|function(_call)?s?|arguments|im_start|im_end)\s*/?>"
    r"|<\|[a-z_]+\|>|```|\{\s*\"(name|function|tool_calls?)\"\s*:",
    re.IGNORECASE,
)
_PROMPT_HEADERS = ("Customer message:", "Sources:")
_SOURCE_HEADER = re.compile(r"^\s*\[\d+\] \([^)\n]+\)\s*$", re.MULTILINE)  # "[2] (prices.csv)": how sources are shown
# the NO_ANSWER signal, also as small models mangle it ("No answer", "Não_ansWER", "NO-ANSWER")
_NO_ANSWER = re.compile(r"\bn(?:o|ao|ão)[\s_-]*answer\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")
SUPPORTED_SHARE = 0.75  # of a reply's own terms (not the question's), at least this share must be the passages'
# ... or this share when the reply brings figures (a price, a phone number) that are all the passages'
FIGURES_SUPPORTED_SHARE = 1 / 3
# currency names: "180,00 reais" tells the passages' "R$ 180,00"
_CURRENCY_WORDS = frozenset("reais real dolares dolar dollars dollar euros euro pesos peso libras pounds".split())
_ECHO_WORDS = 8  # this many consecutive words of the instructions in a reply make it an echo
_FIRST_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_CUSTOMER_ECHO_WORDS = 5  # a reply that tells nothing new and repeats this many of the customer's words echoes them
# words that answer a yes/no question without telling anything: "Sim, você pode parcelar." says no more than
# "Posso parcelar?" (compared accent-folded)
_ANSWER_WORDS = frozenset(
    "sim nao claro pode podem posso podemos voce voces senhor senhora certamente certeza "
    "si puede puedes pueden usted ustedes "
    "yes no sure course can could may you we certainly".split()
)
RESTATEMENT = "a restatement of the customer's message without the facts the sources give"
CUSTOMER_ECHO = "an echo of the customer's message"


def small_talk(text: str) -> tuple[SmallTalk, str] | None:
    """``(kind, language)`` when ``text`` is only a greeting, thanks or goodbye ("Oi, bom dia!", "Hello
    World", "muito obrigado"), else None; a message that asks anything else is not small talk."""
    tokens = fold(" ".join(words(text))).split()
    if not tokens or len(tokens) > _MAX_SMALL_TALK_WORDS:
        return None
    found, i = [], 0
    while i < len(tokens):
        pair = " ".join(tokens[i:i + 2])
        if pair in _ANCHORS:
            found.append(_ANCHORS[pair])
            i += 2
        elif tokens[i] in _ANCHORS:
            found.append(_ANCHORS[tokens[i]])
            i += 1
        elif tokens[i] in _FILLERS:
            i += 1
        else:
            return None
    if not found:
        return None
    order = ("thanks", "goodbye", "greeting")  # "oi, obrigado!" thanks; "tchau, bom dia" says goodbye
    return min(found, key=lambda f: order.index(f[0]))


def small_talk_reply(kind: SmallTalk, language: str) -> str:
    """The built-in short reply to small talk, in ``language`` (English when unknown)."""
    replies = SMALL_TALK_REPLIES[kind]
    return replies.get(language, replies["en"])


def data_reply(checked: list[tuple[str, str, bool]], language: str | None) -> str | None:
    """One line per ``(field, value, saved)``: the value noted, or refused with a request to check it, in
    ``language`` (English when unknown); None when no data was checked."""
    lines = []
    for field, value, saved in checked:
        texts = DATA_REPLIES["saved" if saved else "refused"]
        lines.append(texts.get(language or "en", texts["en"]).format(field=field.replace("_", " "), value=value))
    return "\n".join(lines) or None


def split_no_answer(reply: str) -> tuple[str, bool]:
    """``reply`` without the model's NO_ANSWER signal (in any spelling), and whether it was there."""
    text, n = _NO_ANSWER.subn("", reply)
    return text.strip(), n > 0


def without_echo(reply: str, customer_text: str) -> str:
    """``reply`` without a first line that only repeats the customer's message, or a first sentence that echoes
    their words (:func:`restatement`: "Sim, estou com muita dor de dente." before the answer to "Estou com muita
    dor de dente, o que faço?"): small models often restate the question before answering it."""
    first, sep, rest = reply.strip().partition("\n")
    if sep and rest.strip() and fold(first).strip(" .!?¿¡*#") == fold(customer_text).strip(" .!?¿¡*#"):
        return rest.strip()
    first, *rest = _FIRST_SENTENCE_END.split(reply.strip(), maxsplit=1)
    if rest and rest[0].strip() and restatement(first, customer_text) == CUSTOMER_ECHO:
        return rest[0].strip()
    return reply


def says_not_found(reply: str) -> bool:
    """Whether ``reply`` says the knowledge base has no answer ("Não encontrei essa informação...",
    "I couldn't find...", "No tengo esa información...")."""
    return bool(_NOT_FOUND.search(fold(reply)))


def rejection(reply: str, *, instructions: str = "", customer_text: str = "", language: str | None = None) -> str | None:
    """Why ``reply`` must not be sent to the customer, or None if it may: model markup (tool-call tags,
    template tokens, code fences, a JSON tool call), no real text, an echo of the prompt's
    ``instructions`` or of the customer's own message, or a language other than ``language`` (checked
    only when both are told apart with confidence)."""
    text = reply.strip()
    if m := _MARKUP.search(text):
        return f"model markup ({m.group(0)[:20]!r})"
    if _is_json(text):
        return "a JSON value instead of text"
    if sum(ch.isalnum() for ch in text) < 2:
        return "no text"
    if any(header in text for header in _PROMPT_HEADERS) or _SOURCE_HEADER.search(text):
        return "an echo of the prompt"
    if customer_text and fold(text).strip(" .!?") == fold(customer_text).strip(" .!?") and len(words(text)) > 1:
        return CUSTOMER_ECHO
    if instructions and _shares_run(text, instructions, _ECHO_WORDS):
        return "an echo of the instructions"
    if language and len(words(text)) >= 4:
        said = message_language(text)
        if said and said != language:
            return f"written in {LANGUAGE_NAMES.get(said, said)}, not in the customer's {LANGUAGE_NAMES.get(language, language)}"
    return None


def restatement(reply: str, customer_text: str) -> str | None:
    """Why ``reply`` tells the customer nothing, or None: it brings no number and no term (stemmed, stopwords and
    yes/no words aside) that ``customer_text`` does not hold. ``CUSTOMER_ECHO`` when it also repeats
    ``_CUSTOMER_ECHO_WORDS`` consecutive words of it ("Sim, estou com muita dor de dente." to "Estou com muita
    dor de dente, o que faço?"), else ``RESTATEMENT`` ("Sim, você pode parcelar." to "Posso parcelar?"), a
    bare answer that a second try may complete with what the sources say."""
    lang = message_language(reply) or message_language(customer_text)
    if _own_numbers(reply, customer_text) or _own_terms(reply, customer_text, lang):
        return None
    return CUSTOMER_ECHO if _shares_run(reply, customer_text, _CUSTOMER_ECHO_WORDS) else RESTATEMENT


def still_sendable(problem: str) -> bool:
    """Whether a reply rejected for ``problem`` may still go when asking the model again brings nothing better:
    a real answer in another language than the customer's, or a bare one (``RESTATEMENT``)."""
    return problem == RESTATEMENT or problem.startswith("written in")


def supported(reply: str, passages: list[str], question: str) -> bool:
    """Whether ``reply`` holds only what ``passages`` say: it is no :func:`restatement` of the ``question``,
    each of its numbers is in the passages, and ``SUPPORTED_SHARE`` of its own terms (stemmed; stopwords, yes/no
    words and currency names aside) occur in them, or ``FIGURES_SUPPORTED_SHARE`` when it brings numbers of
    the passages (a price or a phone number copied is the answer; the words around it are phrasing). A reply
    that only restates the question ("No, we do not do implants") or brings words or figures of its own is
    not. Terms are compared in the reply's language, so a reply in
    another language than its passages is not supported."""
    source = " ".join(passages)
    numbers = _own_numbers(reply, question)
    if not numbers <= set(_NUMBER.findall(source)):
        return False
    lang = message_language(reply) or detect_language(words(source))
    own = _own_terms(reply, question, lang, ignore=_CURRENCY_WORDS) - numbers
    if not own:
        return bool(numbers)
    return len(own & key_terms(source, lang)) >= (FIGURES_SUPPORTED_SHARE if numbers else SUPPORTED_SHARE) * len(own)


def _own_numbers(reply: str, question: str) -> set[str]:
    """The numbers of ``reply`` that ``question`` does not hold."""
    return set(_NUMBER.findall(reply)) - set(_NUMBER.findall(question))


def _own_terms(reply: str, question: str, lang: str | None, ignore: frozenset[str] = frozenset()) -> set[str]:
    """The terms of ``reply`` in ``lang`` (stemmed, stopwords, yes/no words and ``ignore`` left out) that
    ``question`` lacks."""
    telling = " ".join(w for w in words(reply) if fold(w) not in _ANSWER_WORDS and fold(w) not in ignore)
    return key_terms(telling, lang) - key_terms(question, lang)


def _is_json(text: str) -> bool:
    if not text or text[0] not in "[{":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _shares_run(text: str, source: str, n: int) -> bool:
    """Whether ``text`` contains ``n`` consecutive words of ``source`` (accent- and case-folded)."""
    src = fold(" ".join(words(source))).split()
    runs = {tuple(src[i:i + n]) for i in range(len(src) - n + 1)}
    got = fold(" ".join(words(text))).split()
    return any(tuple(got[i:i + n]) in runs for i in range(len(got) - n + 1))
