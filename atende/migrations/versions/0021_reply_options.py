"""reply options and read receipts: the choices offered with a message; a sender's read/typing options

``reply_options``: one row per choice offered with an outbound message (``runtime.options``), its ``option_id``
(the WhatsApp button or list row id) unique in the conversation, so a tap maps back to exactly what was offered
there; ``message_parts.interactive``: the WhatsApp buttons or list a part sends instead of text.
``whatsapp_senders.mark_read`` / ``show_typing``: read receipts and the typing indicator per number
(``runtime.whatsapp.presence``), on for the senders already configured. Both added in place (no table rebuilt).

Revision ID: 0021_reply_options
Revises: 0020_message_media
"""
from alembic import op
import sqlalchemy as sa


revision = '0021_reply_options'
down_revision = '0020_message_media'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('message_parts', sa.Column('interactive', sa.JSON(), nullable=True))
    op.add_column('whatsapp_senders', sa.Column('mark_read', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('whatsapp_senders', sa.Column('show_typing', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.create_table('reply_options',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('message_id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('option_id', sa.String(length=200), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('chosen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('conversation_id', 'option_id', name='uq_reply_options_conversation_option')
    )
    op.create_index('ix_reply_options_message_id', 'reply_options', ['message_id'], unique=False)
    op.create_index('ix_reply_options_conversation_id', 'reply_options', ['conversation_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_reply_options_conversation_id', table_name='reply_options')
    op.drop_index('ix_reply_options_message_id', table_name='reply_options')
    op.drop_table('reply_options')
    # plain DROP COLUMN (SQLite >= 3.35, PostgreSQL): no batch rebuild of the senders' table
    op.execute("ALTER TABLE whatsapp_senders DROP COLUMN show_typing")
    op.execute("ALTER TABLE whatsapp_senders DROP COLUMN mark_read")
    op.execute("ALTER TABLE message_parts DROP COLUMN interactive")
