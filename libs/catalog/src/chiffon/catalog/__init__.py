"""Chiffon's playbook catalog: load a folder of playbooks, search it, scaffold roles."""
