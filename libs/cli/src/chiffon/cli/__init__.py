"""The ``chiffon`` command line."""
