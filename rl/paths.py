"""Where the project caches what it builds (data sets, the embedded tokenizer, cold starts)."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$DSA_RL_CACHE`` or ``~/.cache/dsa-rl``."""
    return Path(os.environ.get("DSA_RL_CACHE", Path.home() / ".cache" / "dsa-rl"))
