from chiffon.core.db import run_migrations_env
from chiffon.registry.readmodel import metadata

run_migrations_env(metadata)
