"""Cross-cutting plumbing every Chiffon process shares: settings, logging, telemetry, db."""
