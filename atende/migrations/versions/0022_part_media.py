"""part media: a reply's part may be a file from the knowledge base sent as a document or image

``message_parts.media`` (JSON, nullable): the file's kind, sha256 (the blob store's key), MIME type, file name and
caption (runtime.tools.builtin.send_file, runtime.whatsapp.outbound). Added in place: no table is rebuilt.

Revision ID: 0022_part_media
Revises: 0021_reply_options
"""
from alembic import op
import sqlalchemy as sa


revision = '0022_part_media'
down_revision = '0021_reply_options'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('message_parts', sa.Column('media', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE message_parts DROP COLUMN media")
