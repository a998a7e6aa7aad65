"""approved answers

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approved_answers',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('assistant_id', sa.String(length=32), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('question_key', sa.String(length=40), nullable=False),
    sa.Column('variants', sa.JSON(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('approved_by', sa.String(length=200), nullable=False),
    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sources', sa.JSON(), nullable=False),
    sa.Column('needs_review', sa.Boolean(), nullable=False),
    sa.Column('review_reason', sa.Text(), nullable=True),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.Column('last_hit_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('assistant_id', 'question_key')
    )
    with op.batch_alter_table('approved_answers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approved_answers_assistant_id'), ['assistant_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('approved_answers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approved_answers_assistant_id'))

    op.drop_table('approved_answers')
