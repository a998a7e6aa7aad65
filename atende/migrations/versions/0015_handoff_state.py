"""the handoff state of a conversation and its log

``conversations.ai_enabled`` becomes ``handoff_state``: ``ai`` (the AI answers), ``waiting_for_human`` (handed
off, no person has replied yet) or ``with_human`` (an operator replied). A conversation stored with the AI off
becomes ``waiting_for_human``. Each later change is a row of ``handoff_changes`` (from, to, who, why, when).

Revision ID: 0015
Revises: 0014_leases
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014_leases'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'handoff_changes',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('conversation_id', sa.String(length=32), nullable=False),
        sa.Column('from_state', sa.String(length=20), nullable=False),
        sa.Column('to_state', sa.String(length=20), nullable=False),
        sa.Column('actor', sa.String(length=100), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('handoff_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_handoff_changes_conversation_id'), ['conversation_id'], unique=False)
    # plain ALTER TABLE, not a batch: recreating conversations on SQLite (foreign keys on) would cascade-delete
    # every message of every conversation
    op.add_column('conversations', sa.Column('handoff_state', sa.String(length=20), server_default='ai', nullable=False))
    op.execute("UPDATE conversations SET handoff_state = 'waiting_for_human' WHERE ai_enabled = false")
    _drop_column('conversations', 'ai_enabled')


def downgrade() -> None:
    op.add_column('conversations', sa.Column('ai_enabled', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.execute("UPDATE conversations SET ai_enabled = false WHERE handoff_state <> 'ai'")
    _drop_column('conversations', 'handoff_state')
    with op.batch_alter_table('handoff_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_handoff_changes_conversation_id'))
    op.drop_table('handoff_changes')


def _drop_column(table: str, column: str) -> None:
    """Drop a column in place (SQLite >= 3.35 does it natively; alembic would recreate the table)."""
    op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
