"""message media: the files customers send on WhatsApp, their download state and their transcript

``message_media``: one row per inbound message with a media id (image, audio, voice note, video, document,
sticker), filled by ``runtime.whatsapp.media`` -- the download's status and attempts, the stored file's sha256
(the blob store's key), size, MIME type and file name, and the text read from it (a voice note's transcript, a
document's text). A new table: ``messages`` and ``conversations`` are not touched.

Revision ID: 0020_message_media
Revises: 0019_audit_log
"""
from alembic import op
import sqlalchemy as sa


revision = '0020_message_media'
down_revision = '0019_audit_log'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'message_media',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=False),
        sa.Column('conversation_id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('media_id', sa.String(length=200), nullable=False),
        sa.Column('mime_type', sa.String(length=200), nullable=True),
        sa.Column('file_name', sa.String(length=500), nullable=True),
        sa.Column('size', sa.BigInteger(), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stored_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('transcript_text', sa.Text(), nullable=True),
        sa.Column('transcript_language', sa.String(length=16), nullable=True),
        sa.Column('transcript_engine', sa.String(length=200), nullable=True),
        sa.Column('transcribed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('transcript_error', sa.Text(), nullable=True),
        sa.Column('transcript_attempts', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('message_id'),
    )
    op.create_index('ix_message_media_conversation_id', 'message_media', ['conversation_id'])
    op.create_index('ix_message_media_status', 'message_media', ['status'])


def downgrade() -> None:
    op.drop_index('ix_message_media_status', table_name='message_media')
    op.drop_index('ix_message_media_conversation_id', table_name='message_media')
    op.drop_table('message_media')
