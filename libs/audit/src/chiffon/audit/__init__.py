"""A run's audit record from its events, the audit index and the git export."""
