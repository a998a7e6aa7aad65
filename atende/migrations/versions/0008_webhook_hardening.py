"""webhook hardening: a signed body is stored once (its SHA-256), template statuses keep their event time

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('whatsapp_webhook_posts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index('uq_whatsapp_webhook_posts_body_sha256', ['body_sha256'], unique=True)

    with op.batch_alter_table('whatsapp_templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('whatsapp_templates', schema=None) as batch_op:
        batch_op.drop_column('status_at')

    with op.batch_alter_table('whatsapp_webhook_posts', schema=None) as batch_op:
        batch_op.drop_index('uq_whatsapp_webhook_posts_body_sha256')
        batch_op.drop_column('body_sha256')
