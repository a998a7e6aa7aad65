"""whatsapp

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('whatsapp_webhook_posts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('processed', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('whatsapp_senders',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('assistant_id', sa.String(length=32), nullable=False),
    sa.Column('phone_number_id', sa.String(length=64), nullable=False),
    sa.Column('display_phone_number', sa.String(length=32), nullable=False),
    sa.Column('waba_id', sa.String(length=64), nullable=False),
    sa.Column('graph_version', sa.String(length=16), nullable=False),
    sa.Column('access_token', sa.Text(), nullable=False),
    sa.Column('app_secret', sa.Text(), nullable=False),
    sa.Column('verify_token', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assistant_id'], ['assistants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('phone_number_id')
    )
    with op.batch_alter_table('whatsapp_senders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_whatsapp_senders_assistant_id'), ['assistant_id'], unique=False)

    op.create_table('whatsapp_templates',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('sender_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('language', sa.String(length=16), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('meta_template_id', sa.String(length=64), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('buttons', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sender_id'], ['whatsapp_senders.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sender_id', 'name', 'language')
    )
    with op.batch_alter_table('whatsapp_templates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_whatsapp_templates_meta_template_id'), ['meta_template_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_whatsapp_templates_sender_id'), ['sender_id'], unique=False)

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('window_closed_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=30), nullable=False, server_default='text'))
        batch_op.add_column(sa.Column('payload', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('error_code', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('error_title', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('billable', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('pricing_category', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('channel_cost', sa.Float(), nullable=False, server_default='0'))
        batch_op.create_index(batch_op.f('ix_messages_channel_message_id'), ['channel_message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_channel_message_id'))
        batch_op.drop_column('channel_cost')
        batch_op.drop_column('pricing_category')
        batch_op.drop_column('billable')
        batch_op.drop_column('error_title')
        batch_op.drop_column('error_code')
        batch_op.drop_column('payload')
        batch_op.drop_column('kind')

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('window_closed_at')

    with op.batch_alter_table('whatsapp_templates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_whatsapp_templates_sender_id'))
        batch_op.drop_index(batch_op.f('ix_whatsapp_templates_meta_template_id'))

    op.drop_table('whatsapp_templates')
    with op.batch_alter_table('whatsapp_senders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_whatsapp_senders_assistant_id'))

    op.drop_table('whatsapp_senders')
    op.drop_table('whatsapp_webhook_posts')
