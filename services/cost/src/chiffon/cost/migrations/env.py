from chiffon.core.db import run_migrations_env
from chiffon.cost.readmodel import metadata

run_migrations_env(metadata)
