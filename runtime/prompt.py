"""Prompt building: system prompt with variables, channel instructions, numbered sources, history."""
from __future__ import annotations

import re
from dataclasses import replace

from kb.keyword import detect_language, key_terms, words
from kb.types import Source
from runtime.config import AssistantConfig
from runtime.replies import LANGUAGE_NAMES
from runtime.types import ChatMessage, Role

NO_ANSWER = "NO_ANSWER"  # the model's signal that the sources do not answer the question
SOURCE_CHARS = 700  # per source: prompt processing is the local model's bottleneck
_VAR = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_SENTENCE = re.compile(r"\S.*?(?:[.!?;:](?=\s)|\n|$)", re.DOTALL)

GROUNDING = (
    "Answer questions in the customer's language with facts from the numbered sources below, even if they are "
    f"in another language. If no source mentions what the customer asks about, reply exactly {NO_ANSWER}; never "
    "answer from general knowledge. Greetings and thanks need no sources. Do not mention source numbers. "
    "If the customer asks for a human or an attendant, call transfer_to_human. If the customer gives personal "
    "data, call collect_data. Use the scheduling tools only when the customer asks to book. After a tool call, "
    "tell the customer its result in their language."
)

# sent when a small model repeats a call it already made, with the tools withdrawn
ANSWER_NOW = (
    "That function was already called and its result is above. Do not call any function now: write your reply "
    "to the customer in plain text, in their language (if a value was refused, ask them to check it)."
)


# a first look at a plain question whose best source matches confidently: reading comprehension on the shown
# passages (no channel rules, no tools); see ``focused_messages``
FOCUSED = (
    "You answer a customer of a business using only the passages below. If a passage states the answer, reply "
    "with it in one or two short sentences, in the customer's language, using the passage's own words and "
    f"numbers. If no passage states it, reply exactly {NO_ANSWER}."
)


def focused_messages(system_prompt: str, sources: list[Source], user_text: str) -> list[ChatMessage]:
    """The focused look's prompt: the assistant's own (filled) ``system_prompt`` and ``FOCUSED``, the shown
    ``sources`` (as numbered and cut for the whole prompt) and the customer's message as the question. The
    1.5B model answers from this many of the questions it gives up on with the whole prompt (channel rules,
    tools, their instructions) in front of it."""
    passages = "\n\n".join(f"[{s.rank}] ({s.filename}{_topic(s)})\n{s.text}" for s in sources)
    system = "\n\n".join(part for part in (system_prompt.strip(), FOCUSED) if part)
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion: {user_text}"}]


def _topic(source: Source) -> str:
    """" — " and the innermost heading over ``source`` (an FAQ's question, a section's title), or ""."""
    heading = (source.section or "").rsplit(" > ", 1)[-1].strip()
    return f" — {heading}" if heading else ""


def retry_instruction(problem: str, language: str | None) -> str:
    """Sent (tools withdrawn) when a reply could not go to the customer, saying why."""
    lang = LANGUAGE_NAMES.get(language or "", "the customer's language")
    return (f"Your last reply could not be sent to the customer: it was {problem}. Write only the message for the "
            f"customer now, in plain text, in {lang}, with facts from the sources; if they do not answer, reply "
            f"exactly {NO_ANSWER}.")


def fill_variables(template: str, variables: dict) -> str:
    """Replace ``{{name}}`` with the conversation's variable (empty when unknown)."""
    return _VAR.sub(lambda m: str(variables.get(m.group(1), "")), template)


def seen_sources(hits: list[Source], query: str = "") -> list[Source]:
    """Renumber hits 1..n and cut each text to what the prompt shows, the part about ``query`` (that
    is what gets logged)."""
    return [replace(hit, rank=i, text=excerpt(hit.text, query)) for i, hit in enumerate(hits, 1)]


def excerpt(text: str, query: str, limit: int = SOURCE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters: the run of whole sentences sharing the most terms
    with ``query`` (stemmed in the text's language, stopwords left out; the earliest run on a tie, so
    with nothing in common the text's start), with "…" marks where text was left out."""
    if len(text) <= limit:
        return text
    lang = detect_language(words(text))
    wanted = key_terms(query, lang)
    spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]
    found = [wanted & key_terms(text[a:b], lang) for a, b in spans]  # query terms in each sentence
    best, window = -1, (0, 0)
    for i, (start, _) in enumerate(spans):
        j = max((k for k in range(i, len(spans)) if spans[k][1] - start <= limit), default=None)
        if j is None:  # one sentence longer than the limit: cut it at a word boundary
            end, score = start + len(text[start:start + limit].rsplit(" ", 1)[0]), len(found[i])
        else:
            end, score = spans[j][1], len(set().union(*found[i:j + 1]))
        if score > best:
            best, window = score, (start, end)
    start, end = window
    return ("… " if start > 0 else "") + text[start:end].strip() + (" …" if end < len(text.rstrip()) else "")


def format_sources(sources: list[Source]) -> str:
    if not sources:
        return (f"Sources: none matched this message. Unless it is a greeting, thanks, a request for a human, "
                f"personal data or a choice the customer made, reply exactly {NO_ANSWER}.")
    blocks = []
    for s in sources:
        where = ", ".join(x for x in (s.filename, f"p. {s.page}" if s.page else "", s.section) if x)
        blocks.append(f"[{s.rank}] ({where})\n{s.text}")
    return "Sources:\n" + "\n\n".join(blocks)


def build_messages(
    config: AssistantConfig, variables: dict, history: list[tuple[Role, str]], user_text: str, sources: list[Source]
) -> list[ChatMessage]:
    """OpenAI-style messages: system (prompt, channel rules, grounding), history, then the sources and
    the new message last. What changes per turn comes last, so a server that reuses the evaluated
    prefix of the previous prompt (llama.cpp does) only processes the new tail. (Naming the customer's
    language here made the 1.5B model answer worse; a reply in another language is asked for again
    instead, see ``retry_instruction``.)"""
    system = "\n\n".join(
        part for part in (
            fill_variables(config.system_prompt, variables).strip(),
            config.text_channel_instructions.strip(),
            GROUNDING,
        ) if part
    )
    messages = [ChatMessage(role="system", content=system)]
    messages += [ChatMessage(role=role, content=text) for role, text in history]
    messages.append(turn_message(sources, user_text))
    return messages


def turn_message(sources: list[Source], user_text: str) -> ChatMessage:
    """The prompt's last message: the numbered sources, then the customer's new message."""
    return ChatMessage(role="user", content=f"{format_sources(sources)}\n\nCustomer message:\n{user_text}")
