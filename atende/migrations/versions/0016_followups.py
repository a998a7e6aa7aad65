"""follow-ups: operator tasks left by handoffs outside business hours

One row per callback to make: the conversation, when (the next opening), the details collected (name, best time,
phone), open or done and by whom, and the WhatsApp template reminder scheduled for the opening, if any.

Revision ID: 0016_followups
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa


revision = '0016_followups'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'followups',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('conversation_id', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('details', sa.JSON(), nullable=False),
        sa.Column('asking', sa.String(length=20), nullable=True),
        sa.Column('status', sa.String(length=10), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=100), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_by', sa.String(length=100), nullable=True),
        sa.Column('reminder_message_id', sa.String(length=32), nullable=True),
        sa.Column('reminder_note', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['reminder_message_id'], ['messages.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_followups_conversation_id', 'followups', ['conversation_id'], unique=False)
    op.create_index('ix_followups_due_at', 'followups', ['due_at'], unique=False)
    op.create_index('ix_followups_status', 'followups', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_followups_status', table_name='followups')
    op.drop_index('ix_followups_due_at', table_name='followups')
    op.drop_index('ix_followups_conversation_id', table_name='followups')
    op.drop_table('followups')
