"""The GRPO loop: start-up checks, and (slow) the real entry point end to end, with kill + resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rl.cluster import check_reachable
from rl.config import StartupError, register_configs, to_config
from rl.setup import build_run

ROOT = Path(__file__).resolve().parents[2]
TINY = ["+experiment=math", "coldstart.sft_steps=10", "coldstart.indexer_warmup_steps=2",
        "coldstart.sparse_steps=2", "data.synth.num_train=200", "data.synth.num_test=50", "data.test_size=8",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=24", "algorithm.group_size=4",
        "algorithm.mini_batch_size=8", "algorithm.micro_batch_size=8", "logger=none", "logger.progress=false"]
register_configs()


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return to_config(compose(config_name="train", overrides=overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("data.source=/nope/problems.json", "data.source='/nope/problems.json': no such file or directory"),
    ("rewards.terms.correct.name=no_such_reward", "unknown reward 'no_such_reward'; built-in rewards: "),
    ("cluster.address=127.0.0.1:9", "cluster.address='127.0.0.1:9': nothing answers at 127.0.0.1:9"),
])
def test_bad_input_stops_at_start_up(tmp_path: Path, override: str, message: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(StartupError) as err:
        build_run(_cfg([*TINY, override]), str(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - t0 < 30


def test_address_forms() -> None:
    with pytest.raises(StartupError, match="expected HOST:PORT"):
        check_reachable("not-an-address")
    with pytest.raises(StartupError, match="nothing answers at 127.0.0.1:9"):
        check_reachable("ray://127.0.0.1:9")


def test_step_metrics_report_kept_set_sizes() -> None:
    """Keep Sampling Mask's kept sets are counted over sampled tokens only (prompt rows ignored)."""
    from types import SimpleNamespace

    import torch

    from rl.loop import recipe_metrics
    from rollout.types import Trajectory, pack_mask

    def traj(kept_rows: list[list[bool]] | None) -> Trajectory:
        mask = torch.tensor([False, True, True])  # token 0 is the prompt
        packed = None if kept_rows is None else pack_mask(torch.tensor(kept_rows))
        return Trajectory(tokens=torch.zeros(3, dtype=torch.long), prompt_len=1, loss_mask=mask,
                          logprobs=torch.zeros(3), completion="", finish_reason="stop", weight_version=0,
                          sampling_mask=packed)

    V = 10
    full = [True] * V
    a = traj([full, [True] * 3 + [False] * 7, [True] + [False] * 9])  # sampled tokens keep 3 and 1
    b = traj([full, [True] * 2 + [False] * 8, full])                 # 2 and 10
    dense = SimpleNamespace(attention_mode="dense", index_topk=None)
    m = recipe_metrics([a, b, traj(None)], dense)
    assert m["rollout/kept_set_mean"] == (3 + 1 + 2 + 10) / 4 and m["rollout/kept_set_max"] == 10
    assert "rollout/kept_set_mean" not in recipe_metrics([traj(None)], dense)


def _train(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rl.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_reports_start_up_errors_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache")}
    p = _train([*TINY, "data.source=/nope/x.json", f"hydra.run.dir={tmp_path / 'run'}"], env)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2
    assert "error: data.source='/nope/x.json': no such file or directory" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_smoke_run_then_kill_and_resume(tmp_path: Path) -> None:
    """The CI smoke test: the real entry point, 2 steps (with keep_best: validated at steps 0, 1, 2);
    then a 4-step run killed after its first checkpoint and resumed to the end."""
    env = {**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    p = _train([*TINY, "budget=smoke", "keep_best=true", "data.val_size=8", "eval_every=1",
                f"hydra.run.dir={run}"], env)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stopped"].startswith("max_steps")
    assert "eval/greedy_accuracy" in summary["before"] and "eval/pass@4" in summary["after"]
    assert "val/greedy_accuracy" in summary["before"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "val/greedy_accuracy" in h] == [0, 1, 2]
    [kept] = list((run / "best").glob("step-*"))  # one left after the final checkpoint
    assert json.loads((kept / "best.json").read_text())["step"] == summary.get("selected_step", 2)
    from safetensors.torch import load_file  # final/ holds exactly the kept policy's weights

    final, best = load_file(run / "final" / "model.safetensors"), load_file(kept / "model.safetensors")
    assert final.keys() == best.keys() and all(final[k].equal(best[k]) for k in final)
    assert (run / "progress.png").stat().st_size > 0 and (run / "final" / "config.json").exists()
    assert "before RL:" in out and "after RL:" in out

    run2 = tmp_path / "run2"
    args = [*TINY, "budget.max_steps=4", "budget.max_seconds=null", "checkpoint_every=1", f"hydra.run.dir={run2}"]
    p = _train(args, env, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (run2 / "checkpoints" / "latest").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read()[-3000:]
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    latest = (run2 / "checkpoints" / "latest").read_text().strip()
    assert (run2 / "checkpoints" / latest).is_dir()
    assert not (run2 / "summary.json").exists()
    p = _train([*args, f"resume={run2}"], env)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    assert "resumed" in out
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["steps"] == 4
    steps = [json.loads(line)["step"] for line in (run2 / "history.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4 and len(set(steps[1:-1])) == len(steps[1:-1])


@pytest.mark.slow
def test_grpo_on_a_converted_llama(tmp_path: Path) -> None:
    """`model.path=` a Llama converted to DSA: the same entry point trains it (issue 10's hand-off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.policy.convert import convert_pretrained
    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer(cache_dir=tmp_path / "cache")
    src = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(src)
    tok.save_pretrained(src)
    convert_pretrained(str(src), tmp_path / "dsa", index_topk=8, index_n_heads=2, index_head_dim=16)
    env = {**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    # the converted model goes through DSA's indexer warm-up and sparse stage (coldstart.pretrained),
    # then GRPO with top-p (Keep Sampling Mask) and the unbiased KL on
    p = _train([*TINY, "budget=smoke", f"model.path={tmp_path / 'dsa'}", f"hydra.run.dir={run}",
                "coldstart.pretrained=true", "coldstart.sft_steps=0", "rollout.top_p=0.95",
                "algorithm.kl_coef=0.01"], env)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    assert "cold start [indexer warm-up]" in out and "cold start [sparse]" in out and "cold start [sft" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["budget"]["budget/train_flops"] > 0
    assert set(summary["stage_seconds"]) == {"convert", "cold_start", "setup", "eval_before", "rl", "eval_after"}
    assert {"rollout/kept_set_mean", "rollout/sparse_token_frac", "train/kl"} <= set(summary["recipe"])
    assert 1 <= summary["recipe"]["rollout/kept_set_mean"] < len(tok)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(h["train/logp_mismatch_max"] < 1e-4 for h in history if "train/logp_mismatch_max" in h)


@pytest.mark.slow
def test_grpo_on_a_deepseek_v32_checkpoint(tmp_path: Path) -> None:
    """`model.path=` a transformers DeepSeek-V3.2 checkpoint (grouped routing, YaRN): converted on the
    fly, GRPO with Keep Routing trains it, and `final/` comes out as deepseek_v32 (issue 16)."""
    import torch
    from transformers import AutoModelForCausalLM, DeepseekV32Config, DeepseekV32ForCausalLM

    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer(cache_dir=tmp_path / "cache")
    src = tmp_path / "v32"
    cfg = DeepseekV32Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, kv_lora_rank=32,
        q_lora_rank=48, qk_rope_head_dim=8, v_head_dim=16, qk_nope_head_dim=16, n_group=4, topk_group=2,
        num_experts_per_tok=2, first_k_dense_replace=1, index_topk=16, index_n_heads=8, index_head_dim=16,
        max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                        "original_max_position_embeddings": 128, "mscale": 1.0,
                                                        "mscale_all_dim": 1.0})
    torch.manual_seed(0)
    model = DeepseekV32ForCausalLM(cfg)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.e_score_correction_bias.uniform_(-0.2, 0.2)
    model.save_pretrained(src, max_shard_size="200KB")
    tok.save_pretrained(src)
    env = {**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    p = _train([*TINY, "budget=smoke", f"model.path={src}", "algorithm.keep_routing=true",
                "model.final_format=deepseek_v32", f"hydra.run.dir={run}"], env)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["budget"]["budget/train_flops"] > 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(h["train/logp_mismatch_max"] < 1e-4 for h in history if "train/logp_mismatch_max" in h)
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert type(final).__name__ == "DeepseekV32ForCausalLM"
