"""Read models of workflows and runs: tables, migrations, projections and queries.

The executor runs the projections; the gateway and the CLI call the queries. Import
from the submodules: ``views`` holds the pydantic models and needs no database code,
which keeps the CLI quick to start.
"""
