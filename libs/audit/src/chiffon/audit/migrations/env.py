from chiffon.audit.tables import metadata
from chiffon.core.db import run_migrations_env

run_migrations_env(metadata)
