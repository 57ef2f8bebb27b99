"""The agent's tools besides shell: python, files, http, sql, ansible and catalog."""
