from chiffon.core.db import run_migrations_env
from chiffon.readmodels.tables import metadata

run_migrations_env(metadata)
