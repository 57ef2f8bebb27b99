"""The cost service: prices LLM calls and enforces budgets."""
