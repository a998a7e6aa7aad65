"""Alembic environment: runs on the connection handed over by atende.migrate.migrate."""
from alembic import context

import api.sessions  # noqa: F401  (register tables on the metadata)
import api.throttle  # noqa: F401
import kb.models  # noqa: F401
import runtime.accounts.models  # noqa: F401
import runtime.approved  # noqa: F401
import runtime.audit  # noqa: F401
import runtime.models  # noqa: F401
import runtime.privacy  # noqa: F401
import runtime.regression  # noqa: F401
import runtime.retention  # noqa: F401
import runtime.whatsapp.models  # noqa: F401
from core.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
