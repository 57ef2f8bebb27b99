"""The dev stack (``chiffon-devstack``): a real NATS server, a real PostgreSQL and every
service on one machine.

Modules, each with one job:

- ``ports``: free ports for tests, busy-port checks with a clear message.
- ``procs``: a recorded process (pid + start time) that is safe against pid reuse.
- ``servers``: ``NatsServer`` and ``PostgresServer``, also used by the test suites.
- ``settings``: the stack's settings (ports, replicas, external servers, data folder).
- ``state``: ``.chiffon/stack.json``, ``.chiffon/config.toml`` and the admin key.
- ``supervisor``: start, stop and health-check the service processes.
- ``stack``: ``up`` / ``down`` / ``status`` built from the above; ``up`` applies the
  migrations (``chiffon.core.migrate``) and creates the streams
  (``chiffon.eventstore.provision``), as ``chiffon migrate`` does in a deployment.
- ``logs``: tail and follow log files.
- ``commands``: the Typer commands; the ``chiffon`` CLI finds them through the
  ``chiffon.cli`` entry point, so the CLI itself never depends on the dev stack.

``python -m chiffon.devstack status --json`` runs the same commands as ``chiffon``
without importing the rest of the CLI (faster for scripts that poll).
"""
