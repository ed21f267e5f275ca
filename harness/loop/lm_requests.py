"""lm-evaluation-harness's three requests answered by the harness's policy, without importing lm-eval (an optional
extra): ``lm_eval_model.py`` wraps these functions in lm-eval's model interface.

- ``generate_until``: the one sampler (``rollout.generate``) under the decoding protocol of ``LmEvalModelConfig``,
  cut at the request's ``until`` strings; the sampler already stops at the family's end tokens (EOS, LLaDA's
  end of turn). Contexts are left-padded to the widest of the call (over all processes), as ``harness eval`` pads
  a split: an item's positions do not depend on the batch or process it lands in, so the same items under the
  same protocol decode the same.
- ``loglikelihood``: the continuation's ELBO given the context (``model/likelihood.py``) with its standard error,
  and ``is_greedy`` from one fully masked forward.
- ``loglikelihood_rolling``: the text cut into lm-eval's disjoint windows of ``max_length`` tokens, each window's
  ELBO given the tokens before it, summed.

Each request draws its noise from a seed of its own (the task, document and choice it answers), so the numbers do
not depend on the number of processes or on which one answers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from harness.model.bounds import check_bounds
from harness.model.elbo import ElboConfig
from harness.model.likelihood import LIKELIHOOD_ESTIMATORS, Likelihood, continuation_elbo
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import DRAWS_STREAM, ROLLOUT_STREAM, generators, stream_seed


@dataclass(frozen=True)
class LmEvalModelConfig:
    """How the policy answers lm-eval's requests: its model arguments (``--model_args KEY=VALUE,...``), each also a
    `harness lm-eval` flag."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """generate_until's decoding protocol (LLaDA-8B-Base on GSM8K: gen_length = steps = block_length = 1024)."""
    estimator: str = field(default="complementary", metadata={"choices": LIKELIHOOD_ESTIMATORS})
    """The ELBO estimator of loglikelihood: 'complementary' (mask pairs l and L - l, every token scored once per
    pair; n_draws even), 'l-stratified' (the training default; exact in one draw for a one-token answer) or 't-iid'
    (i.i.d. noise levels, LLaDA's Eq. 6). Measured on the tiny model (results/bench/likelihood.md), for one
    standard error t-iid needs 30x (4-token answers) and 3.9x (16 tokens) the forwards of complementary,
    l-stratified 3.8x and 1.8x, LLaDA's script's form 3.5x and 1.3x."""
    n_draws: int = field(default=32, metadata={"min": 1})
    """Monte Carlo draws (forwards) per continuation; LLaDA's script uses mc_num 128 (1 for one-token answers)."""
    batch_size: int = field(default=32, metadata={"min": 1})
    """Rows per forward: completions decoded together, or ELBO draws scored together."""
    seed: int = 0
    """Seed of every request's sampling noise and mask draws (each request's own stream)."""
    max_length: int = field(default=0, metadata={"min": 0})
    """loglikelihood_rolling's window in tokens (0: the model's max_position_embeddings)."""

    def validate(self) -> None:
        """The fields' bounds, the sampler's rules and the estimator's draw count; ValueError naming the field."""
        check_bounds(self)
        self.rollout.validate()
        ElboConfig(estimator=self.estimator).check_draws(self.n_draws)


def encode(tokenizer, text: str, special: bool) -> list[int]:  # noqa: ANN001
    """Token ids of ``text``; ``special``: with the tokenizer's added tokens (BOS) for a context no chat template
    made (a templated context already holds them)."""
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def split_pair(tokenizer, context: str, continuation: str, special: bool) -> tuple[list[int], list[int]]:  # noqa: ANN001
    """lm-eval's split of a (context, continuation) pair into ids: trailing spaces of the context move to the
    continuation, the whole is encoded once and the context's ids are cut off, so the continuation's ids are those
    the whole text has (a BPE merge across the boundary stays on the continuation's side)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation, special)
    head = encode(tokenizer, context, special)
    return whole[:len(head)], whole[len(head):]


def cut_at(text: str, until: str | Sequence[str]) -> str:
    """``text`` up to the earliest of the ``until`` strings (a task may give one string)."""
    stops = [until] if isinstance(until, str) else until
    ends = [text.find(stop) for stop in stops if stop and stop in text]
    return text[:min(ends)] if ends else text


def generate_texts(policy, contexts: Sequence[Sequence[int]], seeds: Sequence[int],  # noqa: ANN001
                   cfg: LmEvalModelConfig, width: int = 0) -> list[str]:
    """Completions of the context ids under ``cfg.rollout``, ``cfg.batch_size`` rows at a time, all left-padded to
    the widest context or ``width`` (every process's widest: module docstring)."""
    if not contexts:
        return []
    ids, mask = policy.pad_left(contexts, width)
    texts: list[str] = []
    for start in range(0, len(contexts), cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        rollout = generate(policy, ids[rows], mask[rows], cfg.rollout, generators(list(seeds[rows]), ROLLOUT_STREAM))
        texts += rollout.texts
    return texts


def pair_likelihood(policy, context: Sequence[int], continuation: Sequence[int], seed: int,  # noqa: ANN001
                    cfg: LmEvalModelConfig) -> Likelihood:
    """The continuation's ELBO given the context by ``cfg.n_draws`` draws of ``cfg.estimator``."""
    generator = torch.Generator().manual_seed(stream_seed(seed, DRAWS_STREAM))
    return continuation_elbo(policy, torch.tensor(list(context), dtype=torch.long),
                             torch.tensor(list(continuation), dtype=torch.long), cfg.n_draws, cfg.estimator,
                             generator, cfg.batch_size)


def rolling_likelihood(policy, tokens: Sequence[int], seed: int, cfg: LmEvalModelConfig,  # noqa: ANN001
                       window: int) -> list[Likelihood]:
    """Each of lm-eval's disjoint windows of ``tokens`` (at most ``window`` tokens with their context; the first
    window's context is the prefix token, EOS) scored by its ELBO."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = map(make_disjoint_window, get_rolling_token_windows(
        token_list=list(tokens), prefix_token=policy.eos_id, max_seq_len=window, context_len=1))
    return [pair_likelihood(policy, context, continuation, stream_seed(seed, index), cfg)
            for index, (context, continuation) in enumerate(windows)]
