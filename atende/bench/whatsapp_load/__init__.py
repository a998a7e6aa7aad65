"""WhatsApp load benchmark: signed webhooks at a steady rate against the real app, then the bookkeeping checked.

Two profiles. ``embedded`` (the default): the real app (``create_app``) is served by uvicorn on 127.0.0.1 in a
background thread, with the embedded huey consumer running ``workers`` threads. ``scale`` (PostgreSQL and
Redis only): ``api_processes`` API processes with no consumer (``uvicorn atende.app:create_server_app --factory
--workers N``, one port) and ``worker_processes`` ``atende worker --queue customer`` processes (``workers``
threads in all), each configured through ``ATENDE_*`` like a deployment (``processes``). The Graph API is
the local ``GraphStandIn`` and the chat model a "slow scripted LLM" whose every reply sleeps ``llm_delay_s``:
in process in the embedded profile, an OpenAI-compatible HTTP endpoint (``model_server``, reached through
``ATENDE_LLM_BASE_URL``) in the scale one. A load generator in a
separate process (plain asyncio HTTP/1.1, one connection per post, so it does not share the server's
GIL; ``load`` says why not httpx) posts signed text webhooks from ``customers`` distinct customers
(round-robin), each with a unique wamid, open-loop: post ``i`` is scheduled at ``t0 + i / rate`` whatever
happened to the earlier ones, and its acknowledgement latency is measured **from its scheduled time** (so
a stalled server or a lagging generator is not hidden; the latency from the actual send is reported too).

After the load it waits (bounded by ``drain_timeout_s``) until every post is processed, every inbound
message is covered by a turn, every reply is sent and the queue is empty, then checks from the database:
each acknowledged wamid stored exactly once; every inbound message covered by a turn; one reply per
turn, sent in as many parts as it splits into; messages received by the stand-in == parts with status
``sent`` (and none sent twice). Debounce is reported (turns per customer, messages per turn, turns that started
before their newest message was ``whatsapp_debounce_s`` old).

SQLite and the SQLite huey queue in a temporary data dir by default; ``database_url`` (PostgreSQL) and
``redis_url`` (the huey queue, under a prefix of the run's own, emptied after) select the other setup.
Run: ``python -m atende.bench.whatsapp_load`` or ``atende bench whatsapp`` (defaults: 100 customers, 200
posts/s, 30 s, LLM 2 s, 32 workers); ``--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres``
creates and drops a throw-away database; ``--redis redis://127.0.0.1:6379/14``; ``--profile scale
--api-processes 2 --worker-processes 2``; ``--compare`` runs the embedded then the scale profile (each on its
own throw-away database) and prints them side by side. ``BENCH_PROGRESS=1`` prints the generator's
progress every 5 s; ``kill -USR1 <pid>`` dumps every thread's stack (where a stalled run waits).

Two more modes serve the same app (``stack.serve``): ``ingest_load`` (``atende bench whatsapp --during-ingest
PATH``: the load without, then during, a large document's ingest through the admin API, in one run: reply
latency excluding the model per phase, the ingest's duration) and ``replay`` (``atende bench replay``: 1,000
real dialogues as concurrent closed-loop conversations: throughput, reply latency, the server's RSS, handoffs).
Their customers run in a process of their own with the Graph API stand-in (``customers``), and their checks
accept every turn outcome (``checks``).

The modules: ``payloads`` (what is posted), ``load`` (the open-loop generator and its process),
``harness`` (the app under test: server thread, slow model, queue watch, databases), ``stack`` (the app's
start-up for every mode: settings, profiles, the sender, the model's call log, RSS sampling), ``processes`` (the
scale profile's API and worker processes), ``model_server`` (the slow model over HTTP), ``verify`` (the drain
and the checks), ``report`` (the printed figures), ``run`` (``run_benchmark``, ``compare``), ``customers``,
``checks``, ``ingest_load`` and ``replay`` (the two other modes), ``options`` and ``__main__`` (the command line).
"""
