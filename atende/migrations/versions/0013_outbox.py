"""the outbox: a message part's send attempts and when it is next due

Every outbound WhatsApp message part is stored before it is sent; a send that fails for a reason that may
pass (Graph API down, rate limits) is now retried later instead of failing at once. ``attempts`` counts
the sends tried, ``next_attempt_at`` is when the part is due (``status`` ``pending`` before its first send,
``retrying`` after a failure); ``error_code`` / ``error_title`` keep the last failure. Parts stored before
this revision get 0 attempts and no due time: they are never sent again.

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message_parts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_message_parts_next_attempt_at'), ['next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('message_parts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_parts_next_attempt_at'))
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
