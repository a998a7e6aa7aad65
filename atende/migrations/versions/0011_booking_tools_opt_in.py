"""stored configs: the booking tools become opt-in

Until this revision every assistant's ``tools`` defaulted to all five built-in tools, written out by
``merge_config``, so every assistant (the anonymous widget included) could book appointments. The
booking tools (``list_available_slots``, ``schedule_appointment``) are now off unless enabled. A stored
list equal to the old default is taken as "never chosen" and loses them, except for the demo assistant,
whose config enables them; any other list an admin wrote is kept.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

OLD_DEFAULT = ['search_knowledge_base', 'transfer_to_human', 'collect_data', 'list_available_slots',
               'schedule_appointment']
BOOKING = {'list_available_slots', 'schedule_appointment'}
DEMO = 'demo'

assistants = sa.table('assistants', sa.column('id', sa.String), sa.column('name', sa.String),
                      sa.column('config', sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(assistants.c.id, assistants.c.name, assistants.c.config)).all():
        config = dict(row.config or {})
        if row.name != DEMO and config.get('tools') == OLD_DEFAULT:
            config['tools'] = [t for t in OLD_DEFAULT if t not in BOOKING]
            conn.execute(assistants.update().where(assistants.c.id == row.id).values(config=config))


def downgrade() -> None:
    pass  # one-way: which assistants had the old default is not recorded
