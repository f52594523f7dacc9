"""A plugin reward: 1.0 per completion that ends with ``bonus`` exclamation marks or more."""


def exclaim(prompts, completions, bonus=1, **fields):
    return [1.0 if c.endswith("!" * bonus) else 0.0 for c in completions]
