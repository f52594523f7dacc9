"""Actor side: batched generation engine, multi-turn agent loop, Ray rollout workers and pool."""
