"""Fast-dLLM's block-wise approximate KV cache (arXiv 2505.22618, §3.2, Alg. 1; objectives-more.md §6.2) on the
native transformers path, through transformers' own ``DynamicCache``.

At the first step of each semi-autoregressive block one full forward over the sequence (which also makes that step's
reveal) stores keys and values; the block's other steps run the model on a *window* of positions only, against the
stored entries:

* ``prefix``: the window is the block plus everything after it; the prompt and the finished blocks are cached.
* ``dual``: the window is the block alone; the prompt, the finished blocks and the masked suffix are cached.

Every cached key is stale by design: attention is bidirectional, so a key depends on the tokens revealed since the
refresh. Fast-dLLM measures adjacent-step similarity near 1 inside a block; the harness's ``bench decode`` measures
what that costs in accuracy.

How it is done with public transformers calls only. RoPE is applied before keys are cached, and a bidirectional layer
treats its keys as a set: with explicit ``position_ids`` and an attention mask in the same order, the order of the
sequence is free. So the refresh runs the sequence as [cached positions ; window] and ``crop`` drops the window's
entries, leaving exactly the cached positions; each step appends the window and crops it away again. The dual cache
needs no in-place replacement of the block's entries (Fast-dLLM's patched ``replace_position``). The padding mask
travels in the same order, so left-padded rows stay correct (Fast-dLLM's patched LLaDA attention takes no mask).

Shifted families (Dream: position i's output predicts token i + 1) read the block [s, e) from the outputs at
[s - 1, e - 1), so their window starts one position earlier.
"""

from __future__ import annotations

import torch

from harness.model.predictor import MaskPredictor, at_least_float32

CACHES = NO_CACHE, PREFIX, DUAL = ("none", "prefix", "dual")
"""KV cache modes of the sampler: none, Fast-dLLM's PrefixCache, its DualCache."""
REFRESHES = BLOCK_REFRESH, STEP_REFRESH = ("block", "step")
"""When the cache is rebuilt: once per block (Fast-dLLM), or before every step (exact: a check of the cached path)."""
NATIVE_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
"""The transformers classes the harness's native families load into: their decoders take a ``Cache``."""


class CacheUnsupported(ValueError):
    """The model cannot decode through the KV cache (remote code)."""


class BlockCache:
    """The KV cache of one batch of rows while it is decoded: ``logits`` replaces the policy's full forward.

    ``refresh='step'`` rebuilds the cache from the current tokens before every step and still decodes the step through
    it (one extra full forward per step): the cached path must then equal the uncached sampler token for token.
    """

    def __init__(self, predictor: MaskPredictor, mode: str, attention_mask: torch.Tensor,
                 refresh: str = BLOCK_REFRESH) -> None:
        base = predictor.base()
        if type(base).__name__ not in NATIVE_CLASSES:
            raise CacheUnsupported(f"the KV cache needs a native family ({', '.join(NATIVE_CLASSES)}); "
                                   f"{type(base).__name__} is not one (drop --trust-remote-code or use cache='none')")
        if any("FSDP" in type(m).__name__ or "FullyShardedDataParallel" in type(m).__name__ for m in base.modules()):
            raise CacheUnsupported("the KV cache calls the decoder directly, which FSDP's sharded weights do not "
                                   "allow; decode with cache='none' under FSDP (DDP is fine)")
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()
        self.mode, self.refresh = mode, refresh
        self.shift = int(predictor.family.shift_logits)
        self.attention_mask = attention_mask.long()  # [N, T]
        total = attention_mask.shape[1]
        if predictor.family.positions_skip_padding:  # Dream counts attended tokens only (predictor.py's tok_idx)
            self.position_ids = (self.attention_mask.cumsum(-1) - 1).masked_fill(self.attention_mask == 0, 1)
        else:
            self.position_ids = torch.arange(total, device=attention_mask.device).expand_as(self.attention_mask)
        self.cache = None
        self.window = torch.arange(0)  # [w] the positions run each step
        self.order = torch.arange(0)  # [T] cached positions, then the window
        self.block: slice | None = None
        self.positions = 0
        """Query positions computed so far, summed over rows (a cache saves positions per call, not calls)."""

    def logits(self, x: torch.Tensor, block: slice) -> torch.Tensor:
        """Float32 logits [N, Lb, V] of the block's positions for x [N, T]: through a fresh full forward at the
        block's first step (or every step under refresh='step'), through the window against the cache otherwise."""
        fresh = block != self.block
        if fresh:
            self._plan(block, x.shape[1], x.device)
        if fresh or self.refresh == STEP_REFRESH:
            hidden = self._forward(x[:, self.order], self.order, refresh=True)  # [N, T, H], in self.order
            if self.refresh == BLOCK_REFRESH:  # the refresh makes the block's first reveal (Fast-dLLM)
                return self._head(hidden[:, -len(self.window):], block)
        return self._head(self._forward(x[:, self.window], self.window, refresh=False), block)

    def _plan(self, block: slice, total: int, device: torch.device) -> None:
        """The window of ``block`` and the order [cached ; window] of the refresh forward."""
        start, stop = block.start - self.shift, block.stop - self.shift
        everything = torch.arange(total, device=device)
        self.window = everything[start:] if self.mode == PREFIX else everything[start:stop]
        kept = torch.ones(total, dtype=torch.bool, device=device)
        kept[self.window] = False
        self.order = torch.cat([everything[kept], self.window])
        self.block, self.cache = block, None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, refresh: bool) -> torch.Tensor:
        """Hidden states [N, len(positions), H] of ``ids`` at ``positions``; afterwards the cache holds the cached
        positions only (a refresh rebuilds it, a step's own entries are cropped away)."""
        out = self.decoder(input_ids=ids, attention_mask=self.attention_mask[:, self.order],
                           position_ids=self.position_ids[:, positions], cache=None if refresh else self.cache,
                           use_cache=True)
        out.cache.crop(-len(self.window))
        self.cache = out.cache
        self.positions += ids.numel()
        return out.last_hidden_state

    def _head(self, window_hidden: torch.Tensor, block: slice) -> torch.Tensor:
        """The output head on the block's part of the window (its first Lb outputs): [N, Lb, V], at least float32."""
        return at_least_float32(self.head(window_hidden[:, :block.stop - block.start]))
