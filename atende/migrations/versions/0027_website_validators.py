"""website pages' validators: a page's ETag and Last-Modified, and its links, for conditional requests

``website_pages`` gains ``etag``, ``last_modified`` (sent back as If-None-Match / If-Modified-Since, so that an
unchanged page answers 304 and is not downloaded again) and ``links`` (the page's same-site links, which a crawl
follows when the page answered 304). All nullable: a page synced before has none and is fetched in full once.

Revision ID: 0027_website_validators
Revises: 0026_website_sources
"""
from alembic import op
import sqlalchemy as sa


revision = '0027_website_validators'
down_revision = '0026_website_sources'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('website_pages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('etag', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('last_modified', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('links', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('website_pages', schema=None) as batch_op:
        batch_op.drop_column('links')
        batch_op.drop_column('last_modified')
        batch_op.drop_column('etag')
