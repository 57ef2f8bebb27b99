"""What LLM calls cost and what budgets allow: pure code shared by the executor (which
reserves before a call) and the cost service (which prices and keeps the ledger)."""
