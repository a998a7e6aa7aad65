"""Voice notes made on this machine from real text, transcribed by the local Whisper engine (runtime.whisper).

Questions from the QA sets in ``../shared/data/qa`` (Portuguese: FaQuAD, CC BY 4.0; English: XQuAD, CC BY-SA 4.0)
and, as no Spanish QA set is there, the Spanish sentences of ``../shared/data/docs/docx/eng_spa_mult.docx`` (the
UDHR's article 1) plus spaCy's Spanish example sentences (``spacy.lang.es.examples``, installed with spaCy) are
spoken by Debian's espeak-ng (voices pt-br, es, en-us), padded with half a second of silence, encoded to OGG/Opus
at a voice note's bitrate (runtime.audio) in a temporary dir, and transcribed by several engine configurations in
the same run: the default (int8, beam 5, no temperature fallback, no VAD, language detected), with Silero VAD,
greedy (beam 1), with the language given, with faster-whisper's temperature fallback, in float32. Printed per
language and configuration: word error rate (word-level edit distance over reference words after lower-casing and
removing accents and punctuation; corpus-level), language detection accuracy, real-time factor (wall transcription
time / audio duration) with ``--threads`` CPU threads, and model load time. jiwer would compute the same WER; the
twelve lines here spare a dependency.

    python -m benchmarks.voice_notes --per-language 20
"""
from __future__ import annotations

import argparse
import html
import io
import json
import re
import subprocess
import tempfile
import time
import unicodedata
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.audio import encode_ogg_opus
from runtime.whisper import WhisperTranscriber

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOICES = {"pt": "pt-br", "es": "es", "en": "en-us"}  # espeak-ng voice per language
PAD_S = 0.5  # silence before and after the speech, as a voice note has


def synthesize_voice_note(text: str, voice: str, *, pad_s: float = PAD_S) -> bytes:
    """``text`` spoken by espeak-ng's ``voice``, padded with silence, as OGG/Opus bytes (a voice note)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True,
                         timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        speech = np.frombuffer(reader.readframes(reader.getnframes()), np.int16).astype(np.float32) / 32768.0
    pad = np.zeros(int(rate * pad_s), np.float32)
    return encode_ogg_opus(np.concatenate([pad, speech, pad]), rate)


def normalize_words(text: str) -> list[str]:
    """Lower-cased words without accents or punctuation ("Matrícula?" -> "matricula")."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", text)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word-level edit distance, reference word count) after :func:`normalize_words`."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1], len(ref)


def _qa_questions(name: str, n: int) -> list[str]:
    questions = [json.loads(line)["question"].strip()
                 for line in (DATA / "qa" / name / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    step = max(1, len(questions) // n)  # spread over the set's articles, not the first one's questions
    return questions[::step][:n]


_SPANISH_WORDS = {"los", "las", "del", "y", "en", "de", "la", "el", "con", "como", "unos", "otros", "están", "se"}


def _spanish_sentences() -> list[str]:
    """The Spanish sentences of the shared mixed English/Spanish DOCX, then spaCy's Spanish examples."""
    with zipfile.ZipFile(DATA / "docs" / "docx" / "eng_spa_mult.docx") as docx:
        xml = docx.read("word/document.xml").decode("utf-8")
    paragraphs = ["".join(re.findall(r"<w:t[^>]*>([^<]*)</w:t>", p)) for p in xml.split("</w:p>")]
    text = html.unescape(" ".join(paragraphs)).replace('"', " ")
    found: list[str] = []
    for sentence in re.split(r"(?<=\.)\s+", text):
        sentence = " ".join(sentence.split())
        words = normalize_words(sentence)
        if words and sum(w in _SPANISH_WORDS for w in words) / len(words) > 0.2 and sentence not in found:
            found.append(sentence)
    from spacy.lang.es.examples import sentences as spacy_examples
    return found + [s for s in spacy_examples if s not in found]


def load_sentences(per_language: int) -> dict[str, list[str]]:
    """Up to ``per_language`` real sentences per language (Spanish has the 13 there are)."""
    return {"pt": _qa_questions("faquad_pt", per_language), "es": _spanish_sentences()[:per_language],
            "en": _qa_questions("xquad_en", per_language)}


@dataclass(frozen=True)
class Config:
    name: str
    beam_size: int = 5
    vad_filter: bool = False
    compute_type: str = "int8"
    temperature_fallback: bool = False
    hint: bool = False  # give the language instead of detecting it


CONFIGS = [Config("default (int8, beam 5)"), Config("+ VAD", vad_filter=True), Config("greedy (beam 1)", beam_size=1),
           Config("language given", hint=True), Config("+ temperature fallback", temperature_fallback=True),
           Config("float32", compute_type="float32")]


def run(per_language: int, threads: int, configs: list[Config], log=print) -> list[dict]:
    """Synthesize the notes into a temp dir and transcribe each with every config in turn (note by note, so a
    change in the machine's load falls on all configs alike); one result row per (config, language)."""
    sentences = load_sentences(per_language)
    with tempfile.TemporaryDirectory(prefix="voice-notes-") as tmp:
        notes: list[tuple[str, str, Path]] = []
        for lang, texts in sentences.items():
            for i, text in enumerate(texts):
                path = Path(tmp) / f"{lang}-{i:02d}.ogg"
                path.write_bytes(synthesize_voice_note(text, VOICES[lang]))
                notes.append((lang, text, path))
        log(f"{len(notes)} voice notes: " + ", ".join(f"{k} {len(v)}" for k, v in sentences.items()))
        engines, load_s = [], []
        for config in configs:
            engine = WhisperTranscriber(threads=threads, compute_type=config.compute_type,
                                        beam_size=config.beam_size, vad_filter=config.vad_filter,
                                        temperature_fallback=config.temperature_fallback)
            start = time.perf_counter()
            engine.load()
            load_s.append(time.perf_counter() - start)
            engines.append(engine)
        totals = {(c.name, lang): {"errors": 0, "words": 0, "detected": 0, "notes": 0, "audio_s": 0.0, "busy_s": 0.0}
                  for c in configs for lang in sentences}
        for lang, text, path in notes:
            data = path.read_bytes()
            for config, engine in zip(configs, engines, strict=True):
                start = time.perf_counter()
                result = engine.transcribe(data, mime_type="audio/ogg", language=lang if config.hint else None)
                total = totals[(config.name, lang)]
                total["busy_s"] += time.perf_counter() - start
                total["audio_s"] += result.duration_s
                e, n = word_errors(text, result.text)
                total["errors"] += e
                total["words"] += n
                total["detected"] += result.language == lang
                total["notes"] += 1
                log(f"  [{config.name}] {lang} {e}/{n} {result.language}: {text!r} -> {result.text!r}")
    return [{"config": c.name, "lang": lang, "notes": t["notes"], "wer": t["errors"] / t["words"],
             "lang_acc": None if c.hint else t["detected"] / t["notes"], "rtf": t["busy_s"] / t["audio_s"],
             "audio_s": t["audio_s"], "load_s": load}
            for c, load in zip(configs, load_s, strict=True) for lang in sentences
            if (t := totals[(c.name, lang)])["notes"]]


def format_row(row: dict) -> str:
    acc = "given" if row["lang_acc"] is None else f"{row['lang_acc']:.2f}"
    return (f"{row['config']:<24} {row['lang']:<3} {row['notes']:>5} {row['wer']:>6.2f} {acc:>8} "
            f"{row['rtf']:>6.2f} {row['audio_s']:>8.0f} {row['load_s']:>7.1f}")


HEADER = f"{'config':<24} {'lang':<3} {'notes':>5} {'WER':>6} {'lang ok':>8} {'RTF':>6} {'audio s':>8} {'load s':>7}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-language", type=int, default=20, help="sentences per language (Spanish: at most 13)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the engine")
    parser.add_argument("--configs", default=",".join(str(i) for i in range(len(CONFIGS))),
                        help="indexes into " + "; ".join(f"{i}: {c.name}" for i, c in enumerate(CONFIGS)))
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args()
    configs = [CONFIGS[int(i)] for i in args.configs.split(",")]
    rows = run(args.per_language, args.threads, configs, log=(lambda *_: None) if args.quiet else print)
    print(HEADER)
    for row in rows:
        print(format_row(row))
    base = {r["lang"]: r for r in rows if r["config"] == configs[0].name}
    for row in rows:
        if row["config"] != configs[0].name:
            b = base[row["lang"]]
            print(f"{row['config']:<24} {row['lang']}: WER x{row['wer'] / max(b['wer'], 1e-9):.2f}, "
                  f"RTF x{row['rtf'] / b['rtf']:.2f} of the default")


if __name__ == "__main__":
    main()
