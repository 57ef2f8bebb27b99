"""The trigger service: turns webhooks and schedules into run requests."""
