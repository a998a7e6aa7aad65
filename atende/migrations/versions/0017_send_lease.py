"""send lease: a message part taken for a send says until when its sender is alive

``message_parts.claimed_until``: set when a sender claims the part for one send (``runtime.whatsapp.outbound``: the
longest a send may take plus ``Settings.recovery_margin_s``), cleared once the send's outcome is recorded. A part
still open (``pending``/``retrying``, not due) past it was left by a process that died mid-send: the outbox sweep
settles it (``unknown``, then sent again if Meta's status never comes). Parts claimed before this revision and
left that way (stuck until now) get an expired claim (their ``created_at``), so the first sweep settles them.

Revision ID: 0017_send_lease
Revises: 0016_followups
"""
from alembic import op
import sqlalchemy as sa


revision = '0017_send_lease'
down_revision = '0016_followups'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # in place (no batch): a plain ADD COLUMN on both SQLite and PostgreSQL
    op.add_column('message_parts', sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE message_parts SET claimed_until = created_at WHERE status IN ('pending', 'retrying') "
               "AND next_attempt_at IS NULL AND attempts > 0")


def downgrade() -> None:
    op.execute("ALTER TABLE message_parts DROP COLUMN claimed_until")
