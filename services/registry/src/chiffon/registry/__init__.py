"""The registry service: which agents exist, where, with what capabilities, and whether alive."""
