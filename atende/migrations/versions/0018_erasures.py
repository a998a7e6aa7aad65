"""erasures: the record that one customer's personal data was erased (runtime.privacy)

``erasures``: who asked, when, why, the rows removed per table, and the customer only as an HMAC of their id
(``customer_ref``), so the record itself names nobody.

Revision ID: 0018_erasures
Revises: 0017_send_lease
"""
from alembic import op
import sqlalchemy as sa


revision = '0018_erasures'
down_revision = '0017_send_lease'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'erasures',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('customer_ref', sa.String(64), nullable=False),
        sa.Column('assistant_id', sa.String(32), sa.ForeignKey('assistants.id', ondelete='SET NULL'), nullable=True),
        sa.Column('requested_by', sa.String(200), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_erasures_customer_ref', 'erasures', ['customer_ref'])


def downgrade() -> None:
    op.drop_index('ix_erasures_customer_ref', table_name='erasures')
    op.drop_table('erasures')
