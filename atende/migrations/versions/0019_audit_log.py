"""audit_log: who changed what through the admin API or the dashboard, and who read personal data (runtime.audit)

Revision ID: 0019_audit_log
Revises: 0018_erasures
"""
from alembic import op
import sqlalchemy as sa


revision = '0019_audit_log'
down_revision = '0018_erasures'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_log',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.String(100), nullable=False),
        sa.Column('client', sa.String(64), nullable=False),
        sa.Column('kind', sa.String(10), nullable=False),
        sa.Column('method', sa.String(10), nullable=False),
        sa.Column('route', sa.String(300), nullable=False),
        sa.Column('path', sa.String(1000), nullable=False),
        sa.Column('query', sa.JSON(), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'])


def downgrade() -> None:
    op.drop_index('ix_audit_log_at', table_name='audit_log')
    op.drop_table('audit_log')
