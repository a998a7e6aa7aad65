"""accounts: users with a role and the assistants they see, personal API tokens, sessions of a user, audit by user

``users``, ``user_assistants`` and ``api_tokens`` are new. ``admin_sessions`` is made again with the user it signed
in (``user_id``), a public ``ref`` and where it came from: the sessions open before belong to nobody, so everyone
signs in again. ``audit_log.user_id`` (nullable: older entries named "admin token" or a dashboard session) is
added in place.

Revision ID: 0024_accounts
Revises: 0023_retention
"""
from alembic import op
import sqlalchemy as sa


revision = '0024_accounts'
down_revision = '0023_retention'
branch_labels = None
depends_on = None


def _old_sessions_table() -> None:
    op.create_table('admin_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_admin_sessions_expires_at', 'admin_sessions', ['expires_at'], unique=False)


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('all_assistants', sa.Boolean(), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('user_assistants',
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('assistant_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'assistant_id')
    )
    op.create_index('ix_user_assistants_assistant_id', 'user_assistants', ['assistant_id'], unique=False)
    op.create_table('api_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index('ix_api_tokens_user_id', 'api_tokens', ['user_id'], unique=False)

    op.drop_index('ix_admin_sessions_expires_at', table_name='admin_sessions')
    op.drop_table('admin_sessions')
    op.create_table('admin_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('ref', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ref')
    )
    op.create_index('ix_admin_sessions_expires_at', 'admin_sessions', ['expires_at'], unique=False)
    op.create_index('ix_admin_sessions_user_id', 'admin_sessions', ['user_id'], unique=False)

    op.add_column('audit_log', sa.Column('user_id', sa.String(length=32), nullable=True))
    op.create_index('ix_audit_log_user_id', 'audit_log', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_log_user_id', table_name='audit_log')
    with op.batch_alter_table('audit_log') as batch_op:
        batch_op.drop_column('user_id')
    op.drop_index('ix_admin_sessions_user_id', table_name='admin_sessions')
    op.drop_index('ix_admin_sessions_expires_at', table_name='admin_sessions')
    op.drop_table('admin_sessions')
    _old_sessions_table()
    op.drop_index('ix_api_tokens_user_id', table_name='api_tokens')
    op.drop_table('api_tokens')
    op.drop_index('ix_user_assistants_assistant_id', table_name='user_assistants')
    op.drop_table('user_assistants')
    op.drop_table('users')
