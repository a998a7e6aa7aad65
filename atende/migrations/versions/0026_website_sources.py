"""website sources: websites a knowledge base follows, the pages they feed, and each sync's record

``website_sources`` (a start URL or a sitemap, include/exclude patterns, page and depth caps, the request interval,
the re-sync interval and the next scheduled sync), ``website_pages`` (a page seen, the document it feeds) and
``website_sync_runs`` (status, page counts, failures with reasons). New tables: ``documents`` is not touched (a
page's document is an ordinary one, filename = URL).

Revision ID: 0026_website_sources
Revises: 0025_automations
"""
from alembic import op
import sqlalchemy as sa


revision = '0026_website_sources'
down_revision = '0025_automations'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'website_sources',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('knowledge_base_id', sa.String(length=32), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('include', sa.JSON(), nullable=False),
        sa.Column('exclude', sa.JSON(), nullable=False),
        sa.Column('max_pages', sa.Integer(), nullable=False),
        sa.Column('max_depth', sa.Integer(), nullable=False),
        sa.Column('request_interval_s', sa.Float(), nullable=False),
        sa.Column('sync_interval_hours', sa.Float(), nullable=False),
        sa.Column('next_sync_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['knowledge_base_id'], ['knowledge_bases.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_website_sources_knowledge_base_id', 'website_sources', ['knowledge_base_id'])
    op.create_index('ix_website_sources_next_sync_at', 'website_sources', ['next_sync_at'])
    op.create_table(
        'website_pages',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('source_id', sa.String(length=32), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('document_id', sa.String(length=32), nullable=True),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['source_id'], ['website_sources.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('source_id', 'url'),
    )
    op.create_index('ix_website_pages_source_id', 'website_pages', ['source_id'])
    op.create_index('ix_website_pages_document_id', 'website_pages', ['document_id'])
    op.create_table(
        'website_sync_runs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('source_id', sa.String(length=32), nullable=False),
        sa.Column('trigger', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('pages_planned', sa.Integer(), nullable=False),
        sa.Column('pages_seen', sa.Integer(), nullable=False),
        sa.Column('pages_added', sa.Integer(), nullable=False),
        sa.Column('pages_changed', sa.Integer(), nullable=False),
        sa.Column('pages_unchanged', sa.Integer(), nullable=False),
        sa.Column('pages_removed', sa.Integer(), nullable=False),
        sa.Column('pages_failed', sa.Integer(), nullable=False),
        sa.Column('failures', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['source_id'], ['website_sources.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_website_sync_runs_source_id', 'website_sync_runs', ['source_id'])


def downgrade() -> None:
    op.drop_index('ix_website_sync_runs_source_id', table_name='website_sync_runs')
    op.drop_table('website_sync_runs')
    op.drop_index('ix_website_pages_document_id', table_name='website_pages')
    op.drop_index('ix_website_pages_source_id', table_name='website_pages')
    op.drop_table('website_pages')
    op.drop_index('ix_website_sources_next_sync_at', table_name='website_sources')
    op.drop_index('ix_website_sources_knowledge_base_id', table_name='website_sources')
    op.drop_table('website_sources')
