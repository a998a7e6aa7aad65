"""Schema migrations on real SQLite and PostgreSQL, including the data migration of stored configs."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from atende.migrate import MIGRATIONS_DIR, migrate
from core.db import make_engine


def upgrade_to(engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_old_config_defaults_become_unset(database_url):
    engine = make_engine(database_url)
    upgrade_to(engine, "0003")
    old_fallback = ("I could not find this in my knowledge base, so I won't guess. Would you like me to transfer "
                    "you to a human agent?")
    configs = {
        "old-default": {"retrieval": {"top_k": 4, "min_score": 0.3}, "temperature": 0.2,
                        "fallback_message": old_fallback,
                        "handoff_message": "I'm passing you to a human agent, who will reply here shortly."},
        "chosen": {"retrieval": {"top_k": 4, "min_score": 0.55}, "fallback_message": "Não sei, desculpe."},
        "empty": {},
    }
    with engine.begin() as conn:
        for name, config in configs.items():
            conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                                 "VALUES (:id, :id, '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :config)"),
                         {"id": name, "config": json.dumps(config)})
    migrate(engine)
    with engine.connect() as conn:
        rows = {r.id: r.config for r in conn.execute(sa.text("SELECT id, config FROM assistants"))}
    stored = {k: v if isinstance(v, dict) else json.loads(v) for k, v in rows.items()}
    assert stored["old-default"] == {"retrieval": {"top_k": 4, "min_score": None}, "temperature": 0.2,
                                     "fallback_message": None, "handoff_message": None}
    assert stored["chosen"] == configs["chosen"] and stored["empty"] == {}
    migrate(engine)  # at head: nothing to do, nothing changes
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM assistants")).scalar() == 3
    engine.dispose()


def test_booking_tools_left_at_the_old_default_are_turned_off(database_url):
    engine = make_engine(database_url)
    upgrade_to(engine, "0010")
    old = ["search_knowledge_base", "transfer_to_human", "collect_data", "list_available_slots", "schedule_appointment"]
    configs = {"shop": {"tools": old}, "demo": {"tools": old}, "clinic": {"tools": ["schedule_appointment"]}, "empty": {}}
    with engine.begin() as conn:
        for name, config in configs.items():
            conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                                 "VALUES (:id, :id, '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :config)"),
                         {"id": name, "config": json.dumps(config)})
    migrate(engine)
    with engine.connect() as conn:
        rows = {r.id: r.config for r in conn.execute(sa.text("SELECT id, config FROM assistants"))}
    stored = {k: v if isinstance(v, dict) else json.loads(v) for k, v in rows.items()}
    assert stored["shop"] == {"tools": ["search_knowledge_base", "transfer_to_human", "collect_data"]}
    assert {k: stored[k] for k in ("demo", "clinic", "empty")} == {k: configs[k] for k in ("demo", "clinic", "empty")}
    engine.dispose()


def test_whatsapp_messages_already_sent_become_one_part_each(database_url):
    """Revision 0012: an outbound WhatsApp message sent before it gets one part, with its id (the callback data
    its send carried) and its delivery fields; messages of other channels and inbound ones get none."""
    engine = make_engine(database_url)
    upgrade_to(engine, "0011")
    insert = sa.text("INSERT INTO messages (id, conversation_id, direction, text, status, channel_message_id, kind, "
                     "channel_cost, created_at, tokens_in, tokens_out, cost) VALUES (:id, :conv, :direction, 'Olá', "
                     ":status, :wamid, 'text', 0.008, CURRENT_TIMESTAMP, 0, 0, 0)")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                             "VALUES ('a', 'a', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}')"))
        for conv, channel in (("wa", "whatsapp"), ("api", "api")):
            conn.execute(sa.text("INSERT INTO conversations (id, assistant_id, channel, sender, customer_id, ai_enabled, "
                                 "variables, created_at, tokens_in, tokens_out, cost) VALUES (:id, 'a', :channel, 's', "
                                 "'c', true, '{}', CURRENT_TIMESTAMP, 0, 0, 0)"), {"id": conv, "channel": channel})
        for id_, conv, direction, status, wamid in (("m1", "wa", "outbound", "read", "wamid.1"),
                                                    ("m2", "wa", "inbound", "answered", "wamid.2"),
                                                    ("m3", "wa", "outbound", "not_sent", None),
                                                    ("m4", "api", "outbound", "answered", None)):
            conn.execute(insert, {"id": id_, "conv": conv, "direction": direction, "status": status, "wamid": wamid})
    migrate(engine)
    with engine.connect() as conn:
        parts = conn.execute(sa.text("SELECT id, message_id, position, text, status, channel_message_id, channel_cost "
                                     "FROM message_parts")).all()
    assert [tuple(p) for p in parts] == [("m1", "m1", 0, "Olá", "read", "wamid.1", 0.008)]
    engine.dispose()


def test_conversations_with_the_ai_off_become_waiting_for_human(database_url):
    """Revision 0015: ``ai_enabled`` becomes ``handoff_state`` (off: ``waiting_for_human``), and back down."""
    engine = make_engine(database_url)
    upgrade_to(engine, "0013")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                             "VALUES ('a', 'a', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}')"))
        for conv, on in (("on", True), ("off", False)):
            conn.execute(sa.text("INSERT INTO conversations (id, assistant_id, channel, sender, customer_id, ai_enabled, "
                                 "variables, created_at, tokens_in, tokens_out, cost) VALUES (:id, 'a', 'api', 's', "
                                 ":id, :on, '{}', CURRENT_TIMESTAMP, 0, 0, 0)"), {"id": conv, "on": on})
            conn.execute(sa.text("INSERT INTO messages (id, conversation_id, direction, text, status, kind, channel_cost, "
                                 "created_at, tokens_in, tokens_out, cost) VALUES (:id, :id, 'inbound', 'Olá', "
                                 "'answered', 'text', 0, CURRENT_TIMESTAMP, 0, 0, 0)"), {"id": conv})
    migrate(engine)
    with engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT id, handoff_state FROM conversations")).all())
        messages = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar()
    assert states == {"on": "ai", "off": "waiting_for_human"}
    assert messages == 2  # the conversations were altered in place, not recreated (which would cascade)
    upgrade_to(engine, "0015")  # already there
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013")
    with engine.connect() as conn:
        enabled = {k: bool(v) for k, v in conn.execute(sa.text("SELECT id, ai_enabled FROM conversations")).all()}
    assert enabled == {"on": True, "off": False}
    engine.dispose()


def test_parts_left_claimed_by_a_dead_sender_get_an_expired_send_lease(database_url):
    """Revision 0017: ``message_parts.claimed_until`` added in place; the parts a sender claimed and never settled
    (open, not due, tried) get their ``created_at`` as an expired lease, no other part a lease; and back down."""
    engine = make_engine(database_url)
    upgrade_to(engine, "0016_followups")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                             "VALUES ('a', 'a', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}')"))
        conn.execute(sa.text("INSERT INTO conversations (id, assistant_id, channel, sender, customer_id, variables, "
                             "created_at, tokens_in, tokens_out, cost) VALUES ('wa', 'a', 'whatsapp', 's', 'c', '{}', "
                             "CURRENT_TIMESTAMP, 0, 0, 0)"))
        conn.execute(sa.text("INSERT INTO messages (id, conversation_id, direction, text, status, kind, channel_cost, "
                             "created_at, tokens_in, tokens_out, cost) VALUES ('m', 'wa', 'outbound', 'Olá', 'pending', "
                             "'text', 0, CURRENT_TIMESTAMP, 0, 0, 0)"))
        for position, (part, status, attempts, due) in enumerate((
                ("stuck", "pending", 1, None), ("stuck-retry", "retrying", 2, None), ("waiting", "pending", 0, None),
                ("due", "retrying", 1, "2026-01-01 10:00:00"), ("sent", "sent", 1, None))):
            conn.execute(sa.text("INSERT INTO message_parts (id, message_id, position, text, status, channel_cost, "
                                 "created_at, attempts, next_attempt_at) VALUES (:id, 'm', :position, 'Olá', :status, "
                                 "0, '2026-01-01 09:00:00', :attempts, :due)"),
                         {"id": part, "position": position, "status": status, "attempts": attempts, "due": due})
    migrate(engine)
    with engine.connect() as conn:
        leased = {p for p, until, created in conn.execute(sa.text(
            "SELECT id, claimed_until, created_at FROM message_parts WHERE claimed_until IS NOT NULL"))
            if until == created}
        unleased = set(conn.execute(sa.text("SELECT id FROM message_parts WHERE claimed_until IS NULL")).scalars())
        messages = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar()
    assert leased == {"stuck", "stuck-retry"} and unleased == {"waiting", "due", "sent"} and messages == 1
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016_followups")
    assert "claimed_until" not in {c["name"] for c in sa.inspect(engine).get_columns("message_parts")}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM message_parts")).scalar() == 5
    migrate(engine)
    assert "claimed_until" in {c["name"] for c in sa.inspect(engine).get_columns("message_parts")}
    engine.dispose()


@pytest.mark.parametrize("tables, previous, indexes", [
    ({"approved_answers"}, "0004", {"approved_answers": {"ix_approved_answers_assistant_id"}}),
    ({"message_feedback"}, "0005", {"message_feedback": {"ix_message_feedback_message_id",
                                                         "ix_message_feedback_conversation_id",
                                                         "uq_message_feedback_customer"}}),
    ({"regression_cases", "regression_runs"}, "0006",
     {"regression_runs": {"ix_regression_runs_assistant_id", "uq_regression_runs_running"}}),
    ({"admin_sessions", "auth_failures"}, "0008", {"admin_sessions": {"ix_admin_sessions_expires_at"},
                                                   "auth_failures": {"ix_auth_failures_last_failure_at"}}),
    ({"message_parts"}, "0011", {"message_parts": {"ix_message_parts_message_id",
                                                   "ix_message_parts_channel_message_id"}}),
    ({"handoff_changes"}, "0013", {"handoff_changes": {"ix_handoff_changes_conversation_id"}}),
    ({"followups"}, "0015", {"followups": {"ix_followups_conversation_id", "ix_followups_due_at",
                                           "ix_followups_status"}}),
    ({"erasures"}, "0017", {"erasures": {"ix_erasures_customer_ref"}}),
    ({"audit_log"}, "0018", {"audit_log": {"ix_audit_log_at"}}),
    ({"reply_options"}, "0020_message_media", {"reply_options": {"ix_reply_options_message_id",
                                                              "ix_reply_options_conversation_id"}}),
    ({"retention_runs"}, "0022_part_media", {"retention_runs": {"ix_retention_runs_at"}}),
    ({"users", "user_assistants", "api_tokens"}, "0023_retention",
     {"api_tokens": {"ix_api_tokens_user_id"}, "admin_sessions": {"ix_admin_sessions_user_id"},
      "audit_log": {"ix_audit_log_user_id"}}),
])
def test_round_two_tables_go_up_and_down_and_match_the_models(database_url, tables, previous, indexes):
    """Each migration of round two: its tables and indexes exist at head, match the models, are
    dropped by going down to the previous revision and come back."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.db import Base

    engine = make_engine(database_url)
    migrate(engine)
    for table, names in indexes.items():
        found = {i["name"]: i for i in sa.inspect(engine).get_indexes(table)}
        assert names <= set(found) and all(found[n]["unique"] for n in names if n.startswith("uq_"))
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if any(t in str(d) for t in tables)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, previous)
    assert not tables & set(sa.inspect(engine).get_table_names())
    migrate(engine)
    assert tables <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_processes_starting_together_on_a_new_postgresql_database_migrate_one_after_the_other():
    """API processes and workers started at once all migrate; without the lock all but one fail (a duplicate
    pg_type row when they create the same tables)."""
    import threading

    from tests.conftest import _postgres_database

    database = _postgres_database()
    url = next(database)
    errors: list[BaseException] = []
    engines = [make_engine(url) for _ in range(4)]
    start = threading.Barrier(len(engines))

    def start_up(engine) -> None:
        start.wait()
        try:
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    try:
        threads = [threading.Thread(target=start_up, args=(engine,)) for engine in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        with engines[0].connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar_one() == 1
    finally:
        for engine in engines:
            engine.dispose()
        database.close()


def test_reply_options_columns_are_added_in_place_and_removed_on_the_way_down(database_url):
    """Revision 0021: ``message_parts.interactive`` and the senders' ``mark_read``/``show_typing`` (on for the
    senders already configured) added without rebuilding a table: the rows stay; and back down."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.db import Base

    engine = make_engine(database_url)
    upgrade_to(engine, "0020_message_media")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO assistants (id, name, description, created_at, updated_at, config) "
                             "VALUES ('a', 'a', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}')"))
        conn.execute(sa.text("INSERT INTO whatsapp_senders (id, assistant_id, phone_number_id, display_phone_number, "
                             "waba_id, graph_version, access_token, app_secret, verify_token, created_at) VALUES "
                             "('s', 'a', '1', '', '', 'v21.0', 't', 's', 'v', CURRENT_TIMESTAMP)"))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT mark_read, show_typing FROM whatsapp_senders")).one() == (True, True)
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if any(n in str(d) for n in ("interactive", "mark_read", "show_typing"))] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0020_message_media")
    assert "interactive" not in {c["name"] for c in sa.inspect(engine).get_columns("message_parts")}
    assert "mark_read" not in {c["name"] for c in sa.inspect(engine).get_columns("whatsapp_senders")}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM whatsapp_senders")).scalar() == 1
    engine.dispose()


def test_part_media_column_is_added_in_place_and_removed_on_the_way_down(database_url):
    """Revision 0022: ``message_parts.media`` (a knowledge-base file sent with a reply) matches the model, goes on the
    way down and comes back."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.db import Base

    engine = make_engine(database_url)
    migrate(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "media" in str(d) and "message_parts" in str(d)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0021_reply_options")
    assert "media" not in {c["name"] for c in sa.inspect(engine).get_columns("message_parts")}
    migrate(engine)
    assert "media" in {c["name"] for c in sa.inspect(engine).get_columns("message_parts")}
    engine.dispose()
