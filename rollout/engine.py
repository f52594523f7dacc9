"""`RolloutEngine`: batched autoregressive generation over `DSAForCausalLM`, Ray-free.

gpt-fast-style loop on the model's static `DSACache`: one prefill of the left-padded prompts
(explicit position ids, so padding changes nothing), then one forward per step with the last
token of every row, sampling on the last-position logits only (`rollout.sampling`), every record
written into preallocated per-step buffers, no `transformers.generate` machinery.

Recorded per sampled token (see `rollout.types.Trajectory` for the memory forms):
- the log-probability under the distribution actually drawn from (temperature, top-k / top-p,
  renormalised);
- the kept set, bit-packed (ceil(V/8) bytes per token), when truncation is on;
- when `record_routes`: the MoE routes of every position (prompt from the prefill, sampled tokens
  from the step that fed them), and when `record_topk`: the DSA selections of every position,
  as positions inside the trajectory (0 = its first token; the engine's left padding is removed).
  The final token of a row is never needed to sample anything, but to record its routes and
  selections it is fed once more (one extra step when rows finish together): every position of
  a trajectory then has the routes/selections a teacher-forced forward replays.

Stopping is per row: EOS (unless `ignore_eos`), extra stop ids, stop strings (checked on the
decoded tail of the rows whose newest token can end one: a per-vocabulary lookup, so most steps
decode nothing), `max_new_tokens` (reason ``length``) and the context limit `max_seq_len`
(reason ``context``). A finished row keeps the token that finished it. When at least
`compact_fraction` of the batch rows have retired, the batch (cache included) is compacted, so
finished rows stop costing compute.

Departures from a textbook sampler: the log-probability of a greedy token is under the untruncated
softmax at the given temperature; top-k keeps every id tied with the k-th value. Reproducibility:
the same seed, prompts, parameters, model and device give the same trajectories (the batch split
into micro-batches of `max_batch_size` rows, in order of decreasing prompt length, is part of that,
and so is which equal prompts share a micro-batch: they are prefilled once, and a smaller prefill
batch rounds differently).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from rollout.decode import StaticDecoder
from rollout.params import EngineConfig
from rollout.sampling import SamplingParams, sample_next
from rollout.types import Trajectory, pack_mask

_REASONS = ("", "stop", "stop", "length", "context")  # codes 1 = EOS/id, 2 = stop string
_EOS, _STR, _LEN, _CTX = 1, 2, 3, 4


class RolloutEngine:
    """Batched generation with recorded log-probs, kept sets, routes and selections.

    model: a `DSAForCausalLM` (any device / dtype; it is not moved or put in eval mode here).
    tokenizer: a `transformers` tokenizer (decoding, EOS and pad ids).
    """

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *, seed: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self._weight_version = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = _as_ids(tokenizer.eos_token_id) | _as_ids(model.config.eos_token_id)
        self._seed = seed
        self._generator: torch.Generator | None = None
        self._stop_tables: dict[tuple[str, ...], torch.Tensor] = {}
        self._static = (StaticDecoder(model, compile=self.config.compile)
                        if self.config.static_decode and StaticDecoder.supports(model) else None)

    # ---- public API -----------------------------------------------------------------------------
    @property
    def weight_version(self) -> int:
        """Stamped on every trajectory; whoever changes the weights sets it (the worker, after a
        load or a broadcast), which also drops the decode step's fused copies of them."""
        return self._weight_version

    @weight_version.setter
    def weight_version(self, version: int) -> None:
        self._weight_version = version
        if getattr(self, "_static", None) is not None:
            self._static.invalidate()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str | list[dict]]) -> list[list[int]]:
        """Token ids of text prompts (as is) or chat message lists (chat template + assistant tag)."""
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append(self.tokenizer.encode(p, add_special_tokens=False))
            else:
                enc = self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
                out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
        return out

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, seed: int | None = None
    ) -> list[Trajectory]:
        """Sample one continuation of each prompt (token id lists, any lengths).

        seed: seeds a fresh generator for this call; None continues the engine's own generator
        (seeded once at construction). Returns one `Trajectory` per prompt, in input order, with
        `prompt_index` = position in `prompts` and `sample_index` 0 (callers re-stamp them).
        """
        if self._generator is None or seed is not None:
            gen = torch.Generator(self.device).manual_seed(self._seed if seed is None else seed)
            if seed is None:
                self._generator = gen
        else:
            gen = self._generator
        max_len = self.config.max_seq_len or self.model.config.max_position_embeddings
        results: list[Trajectory | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        todo = []
        for i in order:
            limit = min(params.max_new_tokens, max_len - len(prompts[i]))
            if limit <= 0:  # nothing to sample: an empty continuation
                reason = "length" if params.max_new_tokens <= 0 else "context"
                results[i] = self._empty(list(prompts[i]), reason)
            else:
                todo.append(i)
        bs = self.config.max_batch_size
        with torch.no_grad():
            for c in range(0, len(todo), bs):
                idx = todo[c: c + bs]
                for i, traj in zip(idx, self._run_batch([list(prompts[i]) for i in idx], params, gen, max_len)):
                    results[i] = traj
        for i, t in enumerate(results):
            t.prompt_index = i
        return results  # type: ignore[return-value]

    def generate_greedy(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = SamplingParams.stop
    ) -> list[Trajectory]:
        """Greedy (argmax) decoding, e.g. for evaluation."""
        return self.generate(prompts, SamplingParams(greedy=True, max_new_tokens=max_new_tokens, stop=tuple(stop)))

    def warm_up(self) -> None:
        """Compile the decode step now (`compile=True`; a no-op otherwise), so the first real
        `generate` does not pay for it. Two greedy calls of two new tokens, each over prompts of
        uneven lengths (left padding, as real batches have) longer than the DSA top-k (a shorter
        context takes another branch, another compile): a full batch and a 3-row batch, since the
        compiled code also branches on the batch size's range."""
        if self._static is None or not self.config.compile:
            return
        length = int(getattr(self.model.config, "index_topk", 0)) + 16
        filler = 1 if self.pad_id == 0 else 0  # any id but the pad
        params = SamplingParams(greedy=True, max_new_tokens=2, ignore_eos=True)
        for rows in (self.config.max_batch_size, 3):
            self.generate([[filler] * (length - i % 2) for i in range(rows)], params, seed=0)

    # ---- one micro-batch ------------------------------------------------------------------------
    def _run_batch(
        self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator, max_len: int
    ) -> list[Trajectory]:
        cfg, dev = self.model.config, self.device
        B = len(prompts)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        P = int(lens.max())
        limit = torch.clamp(max_len - lens, max=params.max_new_tokens)  # (B,) >= 1
        limit_is_ctx = limit < params.max_new_tokens
        N = int(limit.max())
        pad = P - lens  # (B,) left padding of each row
        ids = torch.full((B, P), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros(B, P, dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long, device=dev)
            mask[b, P - len(p):] = 1
        rec_routes = self.config.record_routes and cfg.use_moe
        rec_topk = self.config.record_topk and cfg.attention_mode == "sparse"
        recording = rec_routes or rec_topk

        if self._static is not None:
            self._static.refresh()  # the experts' fused weights, if a weight changed in place
        cache, logits, routes_list, topk_list = self._prefill(prompts, ids, mask, P + N, rec_routes, rec_topk)

        # Per-step records, indexed by original row and step; entries past a row's end are garbage.
        V = logits.shape[-1]
        tokens = torch.full((B, N), self.pad_id, dtype=torch.long, device=dev)
        logps = torch.zeros(B, N, dtype=torch.float32, device=dev)
        masks = None
        if params.truncates and self.config.record_masks:
            masks = torch.zeros(B, N, (V + 7) // 8, dtype=torch.uint8, device=dev)
        routes_p = sel_p = routes_g = sel_g = None
        if rec_routes:
            routes_p = torch.stack(routes_list, dim=2).to(torch.int16)  # (B, P, n_moe, k)
            routes_g = torch.zeros((B, N) + routes_p.shape[2:], dtype=torch.int16, device=dev)
        if rec_topk:
            sel_p = torch.stack(topk_list, dim=2).to(torch.int32)  # (B, P, n_layers, index_topk)
            sel_g = torch.full((B, N) + sel_p.shape[2:], -1, dtype=torch.int32, device=dev)
        is_stop = torch.zeros(V, dtype=torch.bool, device=dev)  # (V,): the ids that end a row
        ids_that_stop = sorted(set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids))
        is_stop[torch.tensor([i for i in ids_that_stop if 0 <= i < V], dtype=torch.long, device=dev)] = True
        stop_table = self._stop_table(params.stop, V) if params.stop else None
        reason = torch.zeros(B, dtype=torch.int8, device=dev)
        n_gen = torch.zeros(B, dtype=torch.long, device=dev)

        # State of the current batch rows (shrinks on compaction); `rows` maps them to original rows.
        rows = torch.arange(B, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        pos = lens.clone()[:, None]  # (B, 1): position of the next token fed
        new_valid = torch.ones(B, 1, dtype=torch.long, device=dev)
        for s in range(N):
            tok, lp, keep = sample_next(logits, params, gen)
            sampled = ~done
            tokens[rows, s] = tok
            logps[rows, s] = lp
            if masks is not None:
                masks[rows, s] = pack_mask(keep)
            n_gen[rows] += sampled
            fin_eos = sampled & is_stop[tok]
            fin_len = sampled & (s + 1 >= limit[rows])
            fin_str = self._stop_string_hits(tok, sampled & ~fin_eos, rows, tokens, n_gen, params.stop,
                                             stop_table) if stop_table is not None else torch.zeros_like(done)
            finished = fin_eos | fin_str | fin_len
            if bool(finished.any()):  # most steps finish nothing: skip the bookkeeping
                code = torch.where(fin_eos, _EOS, torch.where(fin_str, _STR, torch.where(
                    limit_is_ctx[rows], _CTX, _LEN)))
                reason[rows] = torch.where(finished, code.to(torch.int8), reason[rows])
                done = done | finished
            feed = sampled if recording else ~done
            n_feed = int(feed.sum())
            if n_feed == 0:
                break
            if n_feed <= (1 - self.config.compact_fraction) * feed.shape[0] and feed.shape[0] > 2:
                keep_rows = feed.nonzero().squeeze(-1)
                if n_feed == 1:  # a finished row rides along: a 1-row batch would recompile the step
                    keep_rows = torch.cat([keep_rows, (~feed).nonzero()[:1, 0]])
                cache.select_rows(keep_rows)
                rows, done, pos, tok = rows[keep_rows], done[keep_rows], pos[keep_rows], tok[keep_rows]
                new_valid = new_valid[: keep_rows.shape[0]]
            logits, step_routes, step_sel = self._step(tok, pos, cache, new_valid, rec_routes, rec_topk)
            if rec_routes:
                routes_g[rows, s] = step_routes.to(torch.int16)
            if rec_topk:
                sel_g[rows, s] = step_sel.to(torch.int32)
            pos = pos + 1

        return self._assemble(prompts, tokens, logps, masks, routes_p, routes_g, sel_p, sel_g, n_gen, reason, pad)

    def _prefill(self, prompts: list[list[int]], ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                 rec_routes: bool, rec_topk: bool):
        """Run the (left-padded) prompts ids/mask (B, P) through the model into a new cache of
        `capacity` slots. Equal prompts (a GRPO group's G copies) are computed once and their cache
        rows, last logits and records copied. Returns (cache, logits (B, V), per-layer routes
        (B, P, k) or None, per-layer selections (B, P, index_topk) or None)."""
        model = self.model
        unique: dict[tuple[int, ...], int] = {}  # prompt -> its index among the unique prompts
        src: list[int] = []  # unique prompt -> the first row holding it
        which: list[int] = []  # row -> its unique prompt
        for b, p in enumerate(prompts):
            if tuple(p) not in unique:
                unique[tuple(p)] = len(src)
                src.append(b)
            which.append(unique[tuple(p)])
        dedupe = len(src) < len(prompts)
        if dedupe:
            src_t = torch.tensor(src, dtype=torch.long, device=ids.device)  # (B_unique,)
            ids, mask = ids[src_t], mask[src_t]
        cache = model.new_cache(ids.shape[0], capacity)
        out = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), cache=cache,
                    logits_to_keep=1, output_expert_routes=rec_routes, output_topk_indices=rec_topk)
        logits = out.logits[:, -1]  # (B_unique, V)
        routes = list(out.expert_routes) if rec_routes else None
        sels = list(out.topk_indices) if rec_topk else None
        if dedupe:
            inv = torch.tensor(which, dtype=torch.long, device=ids.device)  # (B,)
            cache.select_rows(inv)
            logits = logits.index_select(0, inv)
            routes = [r.index_select(0, inv) for r in routes] if routes is not None else None
            sels = [t.index_select(0, inv) for t in sels] if sels is not None else None
        return cache, logits, routes, sels

    def _step(self, tok, pos, cache, new_valid, rec_routes: bool, rec_topk: bool):
        """Feed tok (B,) at positions pos (B, 1). Returns logits (B, V), routes (B, n_moe, k) or
        None, selections (B, n_layers, index_topk) or None."""
        if self._static is not None:
            return self._static(tok, pos[:, 0], cache, want_routes=rec_routes, want_topk=rec_topk)
        out = self.model(tok[:, None], attention_mask=new_valid, position_ids=pos, cache=cache,
                         output_expert_routes=rec_routes, output_topk_indices=rec_topk)
        routes = torch.stack(out.expert_routes, dim=2)[:, 0] if rec_routes else None
        sel = torch.stack(out.topk_indices, dim=2)[:, 0] if rec_topk else None
        return out.logits[:, -1], routes, sel

    # ---- stop strings ---------------------------------------------------------------------------
    def _stop_table(self, stop: tuple[str, ...], vocab: int) -> torch.Tensor:
        """(V,) bool: the id's decoded text holds the last character of a stop string, or is a
        partial UTF-8 sequence. Only rows whose newest token is such an id can have just completed
        a stop string (a stop string's last byte lies in the newest token)."""
        if stop not in self._stop_tables:
            ends = {s[-1] for s in stop if s}
            flags = []
            for i in range(vocab):
                text = self.tokenizer.decode([i], skip_special_tokens=True)
                flags.append("\ufffd" in text or any(c in text for c in ends))
            self._stop_tables[stop] = torch.tensor(flags, dtype=torch.bool, device=self.device)
        return self._stop_tables[stop]

    def _stop_string_hits(self, tok, candidates, rows, tokens, n_gen, stop, table) -> torch.Tensor:
        """(B_cur,) bool: rows whose decoded tail now contains a stop string (candidates only)."""
        hits = torch.zeros_like(candidates)
        cand = (candidates & table[tok]).nonzero().squeeze(-1).tolist()
        window = max(len(s.encode()) for s in stop) + 1  # each token decodes to >= 1 byte
        for r in cand:
            orig = int(rows[r])
            n = int(n_gen[orig])
            tail = self.tokenizer.decode(tokens[orig, max(0, n - window): n].tolist(), skip_special_tokens=True)
            if any(s in tail for s in stop):
                hits[r] = True
        return hits

    # ---- results --------------------------------------------------------------------------------
    def _assemble(self, prompts, tokens, logps, masks, routes_p, routes_g, sel_p, sel_g, n_gen, reason, pad):
        """Per-row `Trajectory` records on the CPU (prompt part first, left padding removed)."""
        cpu = torch.device("cpu")
        tokens, logps, n_gen, reason, pad = (t.to(cpu) for t in (tokens, logps, n_gen, reason, pad))
        masks = masks.to(cpu) if masks is not None else None
        routes_p, routes_g, sel_p, sel_g = (t.to(cpu) if t is not None else None
                                            for t in (routes_p, routes_g, sel_p, sel_g))
        out = []
        for b, prompt in enumerate(prompts):
            n, p0, plen = int(n_gen[b]), int(pad[b]), len(prompt)
            gen = tokens[b, :n]
            traj = Trajectory(
                tokens=torch.cat([torch.tensor(prompt, dtype=torch.long), gen]),
                prompt_len=plen,
                loss_mask=torch.cat([torch.zeros(plen, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]),
                logprobs=torch.cat([torch.zeros(plen), logps[b, :n]]),
                completion=self.tokenizer.decode(gen.tolist(), skip_special_tokens=True),
                finish_reason=_REASONS[int(reason[b])],
                weight_version=self.weight_version,
            )
            if masks is not None:
                traj.sampling_mask = torch.cat([masks.new_zeros((plen, masks.shape[-1])), masks[b, :n]])
            if routes_p is not None:
                traj.expert_routes = torch.cat([routes_p[b, p0:], routes_g[b, :n]])
            if sel_p is not None:
                sel = torch.cat([sel_p[b, p0:], sel_g[b, :n]])  # slot indices of this batch
                traj.topk_indices = torch.where(sel >= 0, sel - p0, sel)
            out.append(traj)
        return out

    def _empty(self, prompt: list[int], reason: str) -> Trajectory:
        L = len(prompt)
        return Trajectory(tokens=torch.tensor(prompt, dtype=torch.long), prompt_len=L,
                          loss_mask=torch.zeros(L, dtype=torch.bool), logprobs=torch.zeros(L), completion="",
                          finish_reason=reason, weight_version=self.weight_version)


def _as_ids(x) -> set[int]:
    if x is None:
        return set()
    return {int(x)} if isinstance(x, int) else {int(i) for i in x}
