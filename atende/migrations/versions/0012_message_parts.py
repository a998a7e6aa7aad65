"""message parts: what a channel actually sent of an outbound message, each part with its own id and status

A reply longer than WhatsApp's 4096 characters goes out in several messages. Until this revision the first
one overwrote the reply's row and the others were rows of their own, without sources. Now the reply keeps
what the model wrote and every part sent is a ``message_parts`` row. Outbound WhatsApp messages already
sent are copied into one part each, whose id is the message's (the callback data their sends carried), so
their late status webhooks still find them.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

SENT_STATUSES = ('pending', 'unknown', 'sent', 'delivered', 'read', 'played', 'failed')


def upgrade() -> None:
    op.create_table('message_parts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('message_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('channel_message_id', sa.String(length=200), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_title', sa.Text(), nullable=True),
    sa.Column('billable', sa.Boolean(), nullable=True),
    sa.Column('pricing_category', sa.String(length=40), nullable=True),
    sa.Column('channel_cost', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', 'position')
    )
    with op.batch_alter_table('message_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_parts_channel_message_id'), ['channel_message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_parts_message_id'), ['message_id'], unique=False)

    columns = ('text', 'status', 'channel_message_id', 'error_code', 'error_title', 'billable', 'pricing_category',
               'channel_cost', 'created_at', 'sent_at')
    op.execute(sa.text(
        f"INSERT INTO message_parts (id, message_id, position, {', '.join(columns)}) "
        f"SELECT m.id, m.id, 0, {', '.join('m.' + c for c in columns)} FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.direction = 'outbound' AND c.channel = 'whatsapp' AND m.status IN :statuses"
    ).bindparams(sa.bindparam('statuses', SENT_STATUSES, expanding=True)))


def downgrade() -> None:
    with op.batch_alter_table('message_parts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_parts_message_id'))
        batch_op.drop_index(batch_op.f('ix_message_parts_channel_message_id'))

    op.drop_table('message_parts')
