"""products.sku"""

import sqlalchemy as sa
from alembic import op

revision = "b2"
down_revision = "a1"


def upgrade():
    op.add_column("products", sa.Column("sku", sa.Text, nullable=True))


def downgrade():
    op.drop_column("products", "sku")
