from chiffon.core.db import run_migrations_env
from chiffon.gateway.readmodel import metadata

run_migrations_env(metadata)
