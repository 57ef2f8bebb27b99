"""Re-driving recorded runs with the engine, calling no provider and no agent."""
