"""The mask predictor as one ``nn.Module``: the backbone once, then the output head on the positions asked for only,
in chunks. It is what accelerate wraps (DDP, FSDP), so every forward of the policy goes through the wrapper.

Why a module of our own around the transformers model: at LLaDA's vocabulary (126,464) the logits dominate memory.
A completion of 512 tokens in a batch of 64 is 64 x 512 x 126,464 float32 logits, 16.6 GB, and backward keeps them.
Here the head is applied to the completion positions only (never the prompt's) and, for log-probabilities, in chunks
of ``logits_chunk`` tokens under activation checkpointing: forward and backward each hold one chunk's [chunk, V]
logits at a time (the head's matmul is recomputed in backward, a small cost beside the backbone). Log-softmax is
taken in float32 whatever the weights' dtype (pitfall P4).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.model.families import Family


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def picked_logp(logits: torch.Tensor, targets: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
    """log softmax(logits)[targets]: logits [..., V], targets [...] -> [...]; gather - logsumexp, so no second
    [..., V] tensor is kept for backward. ``exclude``: a token id left out of the softmax's support (the mask
    token, which the sampler never samples: its conditional is renormalised without it)."""
    if exclude is not None:
        logits = logits.index_fill(-1, torch.tensor([exclude], device=logits.device), float("-inf"))
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logp(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, exclude: int | None = None
               ) -> torch.Tensor:
    """log softmax(head(hidden))[targets] in float32 or wider: hidden [M, H], targets [M] -> [M]."""
    return picked_logp(at_least_float32(head(hidden)), targets, exclude)


def chunked_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                     exclude: int | None = None) -> torch.Tensor:
    """``token_logp`` over hidden [n, L, H] and targets [n, L] -> [n, L], ``chunk`` tokens at a time (0: at once).

    Under autograd each chunk is checkpointed, so backward recomputes its logits instead of keeping them."""
    n, length, width = hidden.shape
    flat_hidden, flat_targets = hidden.reshape(n * length, width), targets.reshape(n * length)
    if chunk <= 0 or n * length <= chunk:
        return token_logp(head, flat_hidden, flat_targets, exclude).view(n, length)
    piece = functools.partial(token_logp, head, exclude=exclude)
    grad = torch.is_grad_enabled()
    parts = [checkpoint(piece, h, t, use_reentrant=False) if grad else piece(h, t)
             for h, t in zip(flat_hidden.split(chunk), flat_targets.split(chunk), strict=True)]
    return torch.cat(parts).view(n, length)


class MaskPredictor(nn.Module):
    """A transformers model read as a mask predictor: per position, the distribution of the token there."""

    def __init__(self, lm: nn.Module, family: Family, logits_chunk: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.family = family
        self.logits_chunk = logits_chunk

    @property
    def _no_split_modules(self) -> list[str]:
        """The base model's layer classes: accelerate's FSDP (TRANSFORMER_BASED_WRAP) makes each layer one unit."""
        return list(getattr(self.base(), "_no_split_modules", None) or [])

    def base(self) -> nn.Module:
        """The transformers model (below a peft wrapper when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice,
                targets: torch.Tensor | None = None, adapters_off: bool = False, exclude: int | None = None,
                ) -> torch.Tensor:
        """Logits [N, l, V] (float32) at ``positions`` (l of them), or, given targets [N, l], log p(targets) [N, l]
        (over the vocabulary without token ``exclude``, when given).

        ``adapters_off``: the base model with the LoRA adapters disabled (the KL reference, no copy of the model)."""
        with self.lm.disable_adapter() if adapters_off else nullcontext():
            hidden, head = self._hidden(input_ids, attention_mask, positions)  # [N, l, H] (or logits, head None)
            if head is None:  # a remote-code model that only returns logits
                logits = at_least_float32(hidden)
                return logits if targets is None else picked_logp(logits, targets, exclude)
            if targets is None:
                return at_least_float32(head(hidden))
            return chunked_logprobs(head, hidden, targets, self.logits_chunk, exclude)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice,
                ) -> tuple[torch.Tensor, nn.Module | None]:
        """The outputs the positions read: hidden states and the head, or (remote code) logits and None."""
        base = self.base()
        attention = attention_mask.long()
        position_ids = None
        if self.family.positions_skip_padding:
            position_ids = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)  # [N, T], Dream's tok_idx
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        if decoder is None or decoder is base:
            out = base(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).logits
            return self._read(out, positions), None
        out = decoder(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).last_hidden_state
        return self._read(out, positions), base.get_output_embeddings()

    def _read(self, outputs: torch.Tensor, positions: slice) -> torch.Tensor:
        """outputs [N, T, *] at ``positions``; shifted families read position i from output i - 1 (position 0
        from output 0, as Dream does)."""
        total = outputs.shape[1]
        start, stop, _ = positions.indices(total)
        if not self.family.shift_logits:
            return outputs[:, start:stop]
        if start == 0:
            return torch.cat([outputs[:, :1], outputs[:, :stop - 1]], dim=1)
        return outputs[:, start - 1:stop - 1]
