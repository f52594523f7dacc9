"""dsa-rl learner side: configs, GRPO losses, trainer, loop, data, budgets, checkpoints."""
