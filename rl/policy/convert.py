"""Turn a Llama/Qwen2-family checkpoint into a DSA policy (`rl.policy.llama.DSALlamaForCausalLM`).

`convert_pretrained(src)` loads a `transformers` Llama- or Qwen2-family causal LM (local directory or
hub id), copies every weight unchanged into a `DSALlamaForCausalLM` (same state-dict names) and
adds a freshly initialised lightning indexer to every attention layer. After `import rl.policy`
the saved result loads with `AutoModelForCausalLM.from_pretrained`.

CLI: `python -m rl.policy.convert SRC DST [--index-topk K] [--index-n-heads H] [--index-head-dim D]`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rl.policy.llama import DSALlamaConfig, DSALlamaForCausalLM

SOURCE_TYPES = ("llama", "qwen2")


def dsa_config_from(source: Any, **indexer: Any) -> DSALlamaConfig:
    """A `DSALlamaConfig` from a Llama/Qwen2 config object; `indexer` sets the DSA fields
    (index_n_heads, index_head_dim, index_topk, attention_mode, ...)."""
    mt = source.model_type
    if mt not in SOURCE_TYPES:
        raise ValueError(f"model_type {mt!r} cannot be converted: supported {SOURCE_TYPES}")
    d = source.to_dict()
    if mt == "qwen2":
        if d.get("use_sliding_window"):
            raise ValueError("Qwen2 with use_sliding_window=true is not supported")
        d = {**d, "qkv_bias": True, "o_bias": False, "attention_bias": False, "mlp_bias": False}
    drop = ("model_type", "architectures", "transformers_version", "use_sliding_window", "sliding_window",
            "max_window_layers", "layer_types")
    base = {k: v for k, v in d.items() if k not in drop}
    return DSALlamaConfig(**{**base, "source_model_type": mt, **indexer})


def convert_model(src: nn.Module, seed: int = 0, **indexer: Any) -> DSALlamaForCausalLM:
    """A `DSALlamaForCausalLM` holding `src`'s weights (unchanged) plus new indexers (seeded init).

    src: a loaded Llama/Qwen2 causal LM. Raises if any source weight has no place in the new model."""
    cfg = dsa_config_from(src.config, **indexer)
    torch.manual_seed(seed)
    model = DSALlamaForCausalLM(cfg).to(dtype=next(src.parameters()).dtype)
    state = src.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in missing if ".indexer." not in k and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if bad_missing or unexpected:
        raise ValueError(f"weights do not map: missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(next(src.parameters()).device).eval()


def convert_pretrained(src: str, dst: str | Path | None = None, seed: int = 0, **indexer: Any) -> nn.Module:
    """Load `src` (local dir, hub id, or a ``gguf:PATH`` / ``gguf:smollm2`` source, see
    `rl.policy.gguf`) with AutoModelForCausalLM, convert, and (if `dst`) save the model and the
    source's tokenizer files there. A `deepseek_v3` / `deepseek_v32` directory goes to
    `rl.policy.deepseek` instead (streamed into the native `DSAForCausalLM`)."""
    from transformers import AutoTokenizer

    from rl.policy.deepseek import is_deepseek_dir
    from rl.policy.gguf import export_gguf, is_gguf

    if is_gguf(src):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dsa-gguf-") as plain:
            return convert_pretrained(str(export_gguf(src, plain)), dst, seed, **indexer)
    if is_deepseek_dir(src):
        return convert_deepseek_pretrained(src, dst, seed=seed, **indexer)
    indexer = {k: v for k, v in indexer.items() if v is not None}

    model = convert_model(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), seed=seed, **indexer)
    if dst is not None:
        model.save_pretrained(dst)
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(dst)
        except (OSError, ValueError):
            pass  # no tokenizer next to the weights: give model.tokenizer= later
    return model


def convert_deepseek_pretrained(src: str | Path, dst: str | Path | None = None, seed: int = 0,
                                dtype: torch.dtype = torch.float32, **indexer: Any) -> nn.Module:
    """A DeepSeek-V3/V3.2 directory as a loaded `DSAForCausalLM` (written to `dst`, or to a temporary
    directory when `dst` is None)."""
    import tempfile

    from rl.policy.deepseek import convert_deepseek
    from rl.policy.modeling import DSAForCausalLM

    if dst is not None:
        convert_deepseek(src, dst, dtype=dtype, seed=seed, **indexer)
        return DSAForCausalLM.from_pretrained(dst, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        convert_deepseek(src, tmp, dtype=dtype, seed=seed, **indexer)
        return DSAForCausalLM.from_pretrained(tmp, dtype=dtype).eval()


def cached_convert(src: str, cache_root: str | Path, seed: int = 0, **indexer: Any) -> Path:
    """A directory holding `src` as a DSA policy, converting it once per (source, settings) into
    ``cache_root/converted/KEY`` (written to a temporary sibling, then renamed): how ``model.path=``
    a Llama/Qwen2 directory, a ``gguf:`` source or a DeepSeek-V3/V3.2 directory is used by
    ``rl.train``. A directory that already holds a DSA policy (``dsa``, ``dsa_llama``) or a hub id is
    returned as it is."""
    import hashlib
    import json
    import shutil

    from rl.policy.deepseek import cached_conversion, is_deepseek_dir
    from rl.policy.gguf import gguf_path, is_gguf

    if is_deepseek_dir(src):
        return cached_conversion(src, cache_root, seed=seed, **indexer)
    if is_gguf(src):
        stamp_file = gguf_path(src)
    else:
        config = Path(src).expanduser() / "config.json"
        if not config.is_file() or json.loads(config.read_text()).get("model_type") not in SOURCE_TYPES:
            return Path(src)
        stamp_file = config
    key = hashlib.sha256(repr((str(src), str(stamp_file.resolve()), stamp_file.stat().st_mtime_ns, seed,
                               sorted(indexer.items()))).encode()).hexdigest()[:16]
    out = Path(cache_root) / "converted" / key
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_pretrained(src, tmp, seed=seed, **indexer)
        tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m rl.policy.convert SRC DST [--index-topk K] [--index-n-heads H] [--index-head-dim D]
    [--dtype float32|bfloat16]. SRC: a Llama/Qwen2 checkpoint or a ``gguf:PATH`` / ``gguf:smollm2``
    source (indexer defaults 32 / 4 / 32), or a
    deepseek_v32 / deepseek_v3 directory (V3.2 keeps its indexers; V3 defaults: top-2048, heads / 2,
    2 * qk_rope_head_dim)."""
    import argparse
    import sys

    from rl.policy.deepseek import CheckpointError, convert_deepseek, is_deepseek_dir
    from rl.policy.gguf import GGUFError

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--index-topk", type=int, default=None)
    p.add_argument("--index-n-heads", type=int, default=None)
    p.add_argument("--index-head-dim", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    indexer = {"index_topk": a.index_topk, "index_n_heads": a.index_n_heads, "index_head_dim": a.index_head_dim}
    cfg_file = Path(a.src) / "config.json"
    if cfg_file.is_file():
        import json

        mt = json.loads(cfg_file.read_text()).get("model_type")
        supported = (*SOURCE_TYPES, "deepseek_v3", "deepseek_v32")
        if mt not in supported:
            sys.exit(f"error: {a.src}: model_type {mt!r} cannot be converted; supported: {', '.join(supported)}")
    try:
        if is_deepseek_dir(a.src):  # streamed: never the whole model in memory
            convert_deepseek(a.src, a.dst, dtype=getattr(torch, a.dtype), seed=a.seed, **indexer)
        else:
            convert_pretrained(a.src, a.dst, seed=a.seed, **indexer)
    except (CheckpointError, GGUFError) as err:
        sys.exit(f"error: {err}")
    print(f"converted {a.src} -> {a.dst}")


if __name__ == "__main__":
    main()
