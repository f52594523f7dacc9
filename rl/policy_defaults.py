"""Defaults of the DSA policy that the run config states too, written once (a leaf: torch-free).

``rl.policy.configuration.DSASparseConfig`` and ``rl.config`` (``model.attention_mode``,
``indexer.index_n_heads`` / ``index_head_dim`` / ``indexer_loss_weight``) both name these: the
config cannot import ``rl.policy`` (torch, transformers) and the policy never imports the config.
"""

ATTENTION_MODES = ("sparse", "dense")
"""``sparse``: DSA top-k attention; ``dense``: full causal attention (the oracle). The first is the default."""
INDEX_N_HEADS = 4
"""Lightning-indexer query heads H_I."""
INDEX_HEAD_DIM = 32
"""Lightning-indexer head dim d_I."""
INDEXER_LOSS_WEIGHT = 1.0
"""Weight of the indexer KL next to the LM loss (V3.2 does not disclose it)."""
