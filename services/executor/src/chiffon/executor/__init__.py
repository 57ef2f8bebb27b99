"""The executor service: runs workflows durably across replicas."""
