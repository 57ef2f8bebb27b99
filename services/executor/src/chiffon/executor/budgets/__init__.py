"""Hard LLM budgets enforced before the call (issue 18): the fold of the budgets, the
reservations committed in groups, the gate an llm node asks, the resumer of runs paused
for want of budget."""
