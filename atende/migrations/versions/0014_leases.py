"""leases: a running WhatsApp turn and a running ingestion job say until when they are alive

``conversations.turn_lease_until`` / ``turn_lease_owner``: set when a WhatsApp turn starts (the turn deadline
plus ``Settings.recovery_margin_s``, by the process ``turn_lease_owner`` names), cleared when it ends. An expired
lease means the process died mid-turn: the recovery sweep (``runtime.recovery``) queues the turn again.
``ingest_jobs.lease_until``: set when a job is claimed and renewed as it progresses; a ``processing`` job past it
was left by a dead worker and is queued again.

Revision ID: 0014_leases
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa


revision = '0014_leases'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('turn_lease_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('turn_lease_owner', sa.String(length=100), nullable=True))
    with op.batch_alter_table('ingest_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # in place, not a batch: recreating conversations on SQLite (foreign keys on) would cascade-delete its messages
    for table, column in (("ingest_jobs", "lease_until"), ("conversations", "turn_lease_owner"),
                          ("conversations", "turn_lease_until")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
