"""keep_best: the validation split, the kept policy on disk, its resume rule, and the loop's ending."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rl.best import BestPolicy
from rl.config import BudgetConfig, ConfigError, DataConfig, StartupError, TrainConfig, validate


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _save(model):
    return lambda d: model.save_pretrained(d)


def test_offer_keeps_strictly_better_policies(tmp_path: Path) -> None:
    model = _tiny_llama()
    best = BestPolicy(tmp_path / "best")
    assert best.offer(0, 0.25, _save(model)) and best.step == 0
    assert not best.offer(2, 0.25, _save(model))  # a tie keeps the earlier step
    assert not best.offer(4, 0.125, _save(model))
    assert best.offer(6, 0.5, _save(model)) and (best.step, best.accuracy) == (6, 0.5)
    assert json.loads((tmp_path / "best" / "step-6" / "best.json").read_text()) == {"step": 6, "accuracy": 0.5}
    # no checkpoint taken: only the kept policy stays; nothing half-written is left
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["step-6"]


def test_the_policy_best_at_the_last_checkpoint_stays_until_the_next(tmp_path: Path) -> None:
    model = _tiny_llama()
    best = BestPolicy(tmp_path / "best")
    best.offer(0, 0.25, _save(model))
    best.checkpointed()  # a checkpoint at some step >= 0: a resume from it needs step-0
    best.offer(4, 0.5, _save(model))
    best.offer(8, 0.75, _save(model))
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["step-0", "step-8"]
    best.checkpointed()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["step-8"]


def test_resume_takes_the_newest_policy_kept_by_the_checkpoint_and_drops_later_ones(tmp_path: Path) -> None:
    model = _tiny_llama()
    assert BestPolicy.resume(tmp_path / "best", 10).step is None  # nothing kept yet
    best = BestPolicy(tmp_path / "best")
    best.offer(8, 0.5, _save(model))
    best.checkpointed()  # checkpoint at step 10
    best.offer(12, 0.75, _save(model))  # validated after it; then the run dies
    kept = BestPolicy.resume(tmp_path / "best", 10)
    assert (kept.step, kept.accuracy, kept.at_checkpoint) == (8, 0.5, 8)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["step-8"]
    (tmp_path / "best" / ".partial-step-16").mkdir()  # a save the kill interrupted: ignored
    assert BestPolicy.resume(tmp_path / "best", 10).step == 8
    dropped = BestPolicy.resume(tmp_path / "best", 5)  # a checkpoint before any kept policy
    assert dropped.step is None and dropped.accuracy == float("-inf")
    assert not (tmp_path / "best" / "step-8").exists()


def test_load_into_restores_the_kept_weights_with_tied_embeddings(tmp_path: Path) -> None:
    model = _tiny_llama()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    best = BestPolicy(tmp_path / "best")
    best.offer(3, 0.5, _save(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    best.load_into(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no validated policy kept"):
        BestPolicy(tmp_path / "none").load_into(model)


def test_keep_best_needs_validation_rows() -> None:
    with pytest.raises(ConfigError, match=r"keep_best=true is invalid with data.val_size=0: set data.val_size"):
        validate(TrainConfig(keep_best=True, budget=BudgetConfig(max_steps=1)))
    validate(TrainConfig(keep_best=True, budget=BudgetConfig(max_steps=1), data=DataConfig(val_size=4)))


def test_validation_rows_follow_the_held_out_rows(tmp_path: Path) -> None:
    import datasets

    from rl.policy.tokenizer import load_tokenizer
    from rl.sources import make_source

    tok = load_tokenizer(cache_dir=tmp_path)
    rows = [{"prompt": f"{i}+1?", "answer": str(i + 1)} for i in range(6)]
    data = {"train": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows)}
    src = make_source(TrainConfig(data=DataConfig(test_size=2, val_size=3)), tok, data)
    assert [r["answer"] for r in src.test_rows] == ["1", "2"]
    assert [r["answer"] for r in src.val_rows] == ["3", "4", "5"]
    assert make_source(TrainConfig(data=DataConfig(test_size=2)), tok, data).val_rows is None
    # the cold start's data does not depend on the evaluation sizes
    assert src.cache_key == make_source(TrainConfig(data=DataConfig(test_size=4)), tok, data).cache_key
    with pytest.raises(StartupError, match=r"data.val_size=5 needs 7 rows in the test split after "
                                           r"data.test_size=2 held-out rows, it has 6: lower"):
        make_source(TrainConfig(data=DataConfig(test_size=2, val_size=5)), tok, data)


def test_validation_scores_are_named_val() -> None:
    from rl.evaluate import scores

    per_term = {"correct": [1.0, 0.0], "lenient": [1.0, 1.0]}
    assert scores("greedy", per_term, [1.0, 0.0], "correct", 1, prefix="val") == {
        "val/greedy_accuracy": 0.5, "val/greedy_reward": 0.5, "val/greedy_lenient": 1.0}


class _Evaluator:
    """Weights are {"step": s}: the model's parameters are filled with s; accuracies come from tables."""

    def __init__(self, test: dict[int, float], val: dict[int, float]) -> None:
        self.model, self.test, self.val, self.held = _tiny_llama(), test, val, None

    def __call__(self, weights, step, sampled=False, split="test"):
        if weights is not None:
            self.held = weights["step"]
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float(self.held))
        table = self.test if split == "test" else self.val
        return {f"{'eval' if split == 'test' else 'val'}/greedy_accuracy": table[self.held]}


def _run(tmp_path: Path, evaluator: _Evaluator, step: int, history: list) -> SimpleNamespace:
    return SimpleNamespace(evaluator=evaluator, trainer=SimpleNamespace(export_state_dict=lambda: {"step": step}),
                           history=history, say=lambda s: None, logger=SimpleNamespace(log=lambda m, s: None),
                           tokenizer=None, dir=tmp_path)


def test_the_run_ends_with_the_validation_best_policy(tmp_path: Path) -> None:
    from rl.loop import _last_and_selected, _validate

    ev = _Evaluator(test={0: 0.3, 2: 0.5, 3: 0.4}, val={0: 0.25, 2: 0.5, 3: 0.375})
    best, history = BestPolicy(tmp_path / "best"), [{"step": 0}, {"step": 2}, {"step": 3}]
    for s in (0, 2):  # the loop's step-0 and step-2 evaluations: held-out, then validation
        run = _run(tmp_path, ev, s, history)
        ev({"step": s}, s)
        history[s if s == 0 else 1].update(_validate(run, best, s))
    assert best.step == 2 and history[1]["val/greedy_accuracy"] == 0.5
    last, selected = _last_and_selected(_run(tmp_path, ev, 3, history), best, 3)
    assert selected and last == {"eval/greedy_accuracy": 0.4}  # the last step was validated and lost
    assert history[-1] == {"step": 3, "eval/greedy_accuracy": 0.4, "val/greedy_accuracy": 0.375}
    assert all(bool((p == 2.0).all()) for p in ev.model.parameters())  # the evaluator holds step 2's weights


def test_a_last_step_that_wins_validation_ends_the_run_as_usual(tmp_path: Path) -> None:
    from rl.loop import _last_and_selected, _validate

    ev = _Evaluator(test={0: 0.3, 3: 0.6}, val={0: 0.25, 3: 0.5})
    best, history = BestPolicy(tmp_path / "best"), [{"step": 0}, {"step": 3}]
    ev({"step": 0}, 0)
    history[0].update(_validate(_run(tmp_path, ev, 0, history), best, 0))
    assert _last_and_selected(_run(tmp_path, ev, 3, history), best, 3) == ({}, False)
    assert best.step == 3 and history[-1]["val/greedy_accuracy"] == 0.5
    assert _last_and_selected(_run(tmp_path, ev, 3, history), None, 3) == ({}, False)  # keep_best off


def test_a_last_step_validated_at_an_evaluation_step_is_not_decoded_again(tmp_path: Path) -> None:
    from rl.loop import _last_and_selected, _validate

    ev = _Evaluator(test={0: 0.3, 4: 0.45}, val={0: 0.5, 4: 0.25})
    best, history = BestPolicy(tmp_path / "best"), [{"step": 0}, {"step": 4}]
    for i, s in enumerate((0, 4)):
        ev({"step": s}, s)
        history[i].update(ev(None, s))
        history[i].update(_validate(_run(tmp_path, ev, s, history), best, s))
    calls = []
    run = _run(tmp_path, _Counting(ev, calls), 4, history)
    last, selected = _last_and_selected(run, best, 4)
    assert selected and last == {"eval/greedy_accuracy": 0.45} and calls == []  # nothing decoded again
    assert all(bool((p == 0.0).all()) for p in ev.model.parameters())  # step 0 won validation


def test_a_resumed_run_whose_last_step_was_kept_but_not_logged_logs_it(tmp_path: Path) -> None:
    from rl.loop import _last_and_selected

    model = _tiny_llama()
    best = BestPolicy(tmp_path / "best")
    best.offer(6, 0.5, _save(model))  # kept by the end-of-run validation, then the run died
    best = BestPolicy.resume(tmp_path / "best", 6)  # resumed from the checkpoint at step 6
    ev = _Evaluator(test={6: 0.4}, val={6: 0.5})
    history = [{"step": 6}]
    assert _last_and_selected(_run(tmp_path, ev, 6, history), best, 6) == ({}, False)
    assert history[-1] == {"step": 6, "eval/greedy_accuracy": 0.4, "val/greedy_accuracy": 0.5}


class _Counting:
    def __init__(self, inner: _Evaluator, calls: list) -> None:
        self.inner, self.calls, self.model = inner, calls, inner.model

    def __call__(self, *a, **k):
        self.calls.append(a)
        return self.inner(*a, **k)
