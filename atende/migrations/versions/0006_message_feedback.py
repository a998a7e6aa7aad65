"""message feedback: ratings of AI replies by reviewers, WhatsApp reactions and the widget's thumbs

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('message_feedback',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('message_id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('rating', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=30), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('emoji', sa.String(length=64), nullable=True),
    sa.Column('author', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('message_feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_feedback_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_feedback_message_id'), ['message_id'], unique=False)
        batch_op.create_index('uq_message_feedback_customer', ['message_id', 'source'], unique=True,
                              sqlite_where=sa.text("source != 'reviewer'"),
                              postgresql_where=sa.text("source != 'reviewer'"))


def downgrade() -> None:
    with op.batch_alter_table('message_feedback', schema=None) as batch_op:
        batch_op.drop_index('uq_message_feedback_customer', sqlite_where=sa.text("source != 'reviewer'"),
                            postgresql_where=sa.text("source != 'reviewer'"))
        batch_op.drop_index(batch_op.f('ix_message_feedback_message_id'))
        batch_op.drop_index(batch_op.f('ix_message_feedback_conversation_id'))

    op.drop_table('message_feedback')
