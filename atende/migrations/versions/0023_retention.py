"""retention: retention runs, and when a webhook body was emptied (runtime.retention)

``retention_runs``: each run of a retention rule that changed something (the rule, the assistant, the cut-off, the
rows per table). ``whatsapp_webhook_posts.purged_at``: when a retention rule emptied the body (its hash stays).

Revision ID: 0023_retention
Revises: 0022_part_media
"""
from alembic import op
import sqlalchemy as sa


revision = '0023_retention'
down_revision = '0022_part_media'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retention_runs',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('assistant_id', sa.String(32), sa.ForeignKey('assistants.id', ondelete='SET NULL'), nullable=True),
        sa.Column('rule', sa.String(20), nullable=False),
        sa.Column('cutoff', sa.DateTime(timezone=True), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('items', sa.Integer(), nullable=False),
    )
    op.create_index('ix_retention_runs_at', 'retention_runs', ['at'])
    op.add_column('whatsapp_webhook_posts', sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('whatsapp_webhook_posts') as batch:
        batch.drop_column('purged_at')
    op.drop_index('ix_retention_runs_at', table_name='retention_runs')
    op.drop_table('retention_runs')
