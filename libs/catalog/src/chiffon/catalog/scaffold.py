"""Role and playbook skeletons from Jinja2 templates (`chiffon infra scaffold`)."""

from __future__ import annotations
