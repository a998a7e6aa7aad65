"""regression checks: turns promoted to test cases, and the runs that replay them

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('regression_cases',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('assistant_id', sa.String(length=32), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('expected_status', sa.String(length=20), nullable=False),
    sa.Column('expected_facts', sa.JSON(), nullable=False),
    sa.Column('expected_sources', sa.JSON(), nullable=False),
    sa.Column('expected_reply', sa.Text(), nullable=True),
    sa.Column('created_from_message_id', sa.String(length=32), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['created_from_message_id'], ['messages.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('regression_cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_regression_cases_assistant_id'), ['assistant_id'], unique=False)

    op.create_table('regression_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('assistant_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('regression_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_regression_runs_assistant_id'), ['assistant_id'], unique=False)
        batch_op.create_index('uq_regression_runs_running', ['assistant_id'], unique=True,
                              sqlite_where=sa.text("status = 'running'"),
                              postgresql_where=sa.text("status = 'running'"))


def downgrade() -> None:
    with op.batch_alter_table('regression_runs', schema=None) as batch_op:
        batch_op.drop_index('uq_regression_runs_running', sqlite_where=sa.text("status = 'running'"),
                            postgresql_where=sa.text("status = 'running'"))
        batch_op.drop_index(batch_op.f('ix_regression_runs_assistant_id'))

    op.drop_table('regression_runs')
    with op.batch_alter_table('regression_cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_regression_cases_assistant_id'))

    op.drop_table('regression_cases')
