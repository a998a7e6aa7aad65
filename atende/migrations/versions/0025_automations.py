"""automations, event subscriptions and scheduled follow-ups

- ``automations`` and ``automation_runs``: named triggers another system calls with a token of its own, and each
  run (who, with what, what was sent, how it ended), unique per idempotency key (runtime.automations).
- ``event_subscriptions`` and ``event_attempts``: where an assistant's events go, and every delivery attempt;
  ``outbound_events`` gains its subscription, assistant, next attempt and send lease (runtime.events).
- ``followups`` gains ``kind`` (callback, the rows already there; message; call), ``text``, ``template``,
  ``message_id`` and ``result`` (runtime.followups).

Columns are added in place: no table is rebuilt.

Revision ID: 0025_automations
Revises: 0024_accounts
"""
from alembic import op
import sqlalchemy as sa


revision = '0025_automations'
down_revision = '0024_accounts'
branch_labels = None
depends_on = None

_EVENT_COLUMNS = ('subscription_id', 'assistant_id', 'next_attempt_at', 'claimed_until')
_EVENT_INDEXES = ('subscription_id', 'assistant_id', 'next_attempt_at')
_FOLLOWUP_COLUMNS = ('kind', 'text', 'template', 'message_id', 'result')


def upgrade() -> None:
    op.create_table(
        'automations',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('assistant_id', sa.String(length=32), nullable=False),
        sa.Column('sender_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('template_name', sa.String(length=512), nullable=True),
        sa.Column('template_language', sa.String(length=16), nullable=True),
        sa.Column('template_parameters', sa.JSON(), nullable=False),
        sa.Column('inside_window', sa.String(length=10), nullable=False),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('ai_instruction', sa.Text(), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['sender_id'], ['whatsapp_senders.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_automations_assistant_id', 'automations', ['assistant_id'])
    op.create_index('ix_automations_sender_id', 'automations', ['sender_id'])
    op.create_table(
        'automation_runs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('automation_id', sa.String(length=32), nullable=False),
        sa.Column('idempotency_key', sa.String(length=200), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('customer_id', sa.String(length=200), nullable=False),
        sa.Column('variables', sa.JSON(), nullable=False),
        sa.Column('triggered_by', sa.String(length=200), nullable=False),
        sa.Column('conversation_id', sa.String(length=32), nullable=True),
        sa.Column('action', sa.String(length=20), nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=True),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['automation_id'], ['automations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('automation_id', 'idempotency_key'),
    )
    op.create_index('ix_automation_runs_automation_id', 'automation_runs', ['automation_id'])
    op.create_index('ix_automation_runs_conversation_id', 'automation_runs', ['conversation_id'])
    op.create_table(
        'event_subscriptions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('assistant_id', sa.String(length=32), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('description', sa.String(length=200), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_event_subscriptions_assistant_id', 'event_subscriptions', ['assistant_id'])
    op.create_table(
        'event_attempts',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('event_id', sa.String(length=32), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['event_id'], ['outbound_events.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_event_attempts_event_id', 'event_attempts', ['event_id'])
    op.add_column('outbound_events', sa.Column('subscription_id', sa.String(length=32), nullable=True))
    op.add_column('outbound_events', sa.Column('assistant_id', sa.String(length=32), nullable=True))
    op.add_column('outbound_events', sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('outbound_events', sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))
    for column in _EVENT_INDEXES:
        op.create_index(f'ix_outbound_events_{column}', 'outbound_events', [column])
    # pending handoff events left by an older version: due now
    op.execute("UPDATE outbound_events SET next_attempt_at = created_at WHERE status = 'pending'")
    op.add_column('followups', sa.Column('kind', sa.String(length=20), server_default='callback', nullable=False))
    op.add_column('followups', sa.Column('text', sa.Text(), nullable=True))
    op.add_column('followups', sa.Column('template', sa.JSON(), nullable=True))
    op.add_column('followups', sa.Column('message_id', sa.String(length=32), nullable=True))
    op.add_column('followups', sa.Column('result', sa.Text(), nullable=True))


def downgrade() -> None:
    for column in _FOLLOWUP_COLUMNS:
        op.execute(f"ALTER TABLE followups DROP COLUMN {column}")
    for column in _EVENT_INDEXES:
        op.drop_index(f'ix_outbound_events_{column}', table_name='outbound_events')
    for column in _EVENT_COLUMNS:
        op.execute(f"ALTER TABLE outbound_events DROP COLUMN {column}")
    op.drop_index('ix_event_attempts_event_id', table_name='event_attempts')
    op.drop_table('event_attempts')
    op.drop_index('ix_event_subscriptions_assistant_id', table_name='event_subscriptions')
    op.drop_table('event_subscriptions')
    op.drop_index('ix_automation_runs_conversation_id', table_name='automation_runs')
    op.drop_index('ix_automation_runs_automation_id', table_name='automation_runs')
    op.drop_table('automation_runs')
    op.drop_index('ix_automations_sender_id', table_name='automations')
    op.drop_index('ix_automations_assistant_id', table_name='automations')
    op.drop_table('automations')
