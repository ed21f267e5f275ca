"""The one dLLM policy wrapper every objective, task and sampler goes through.

It wraps a Hugging Face masked-diffusion model (a bidirectional mask predictor) and its tokenizer, and owns the
token ids that give the model its diffusion meaning (mask, EOS, pad). Reference: LLaDA `generate.py` and
`get_log_likelihood.py` (the model is called on [prompt ; partially masked completion] and predicts every token).

Departures from LLaDA's scripts, each deliberate:
1. Prompts are left-padded with a pad id distinct from the mask id and an attention mask is always passed (d1 pads
   with EOS and passes none, so pad tokens leak into bidirectional attention: pitfall P6).
2. Logits are returned in at least float32 (log-softmax in low precision biases the ELBO: pitfall P4).
3. The model stays in eval mode: LLaDA-style models have no dropout, and eval mode guarantees that the old-policy and
   current-policy passes of an on-policy update are bit-identical (pitfall P3).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class PolicyError(ValueError):
    """A model folder or tokenizer that cannot serve as a masked-diffusion policy."""


class Policy:
    """A masked-diffusion language model plus tokenizer, with the token ids the sampler and the ELBO need."""

    def __init__(self, model: nn.Module, tokenizer, mask_id: int | None = None) -> None:  # noqa: ANN001
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mask_id = int(mask_id if mask_id is not None else tokenizer.mask_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        if self.pad_id == self.mask_id:
            raise PolicyError(f"pad id {self.pad_id} equals the mask id: padding would read as masked tokens")
        self._reference: nn.Module | None = None

    # ---- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                        ) -> Policy:
        """Load a local checkpoint folder (LLaDA-8B-Instruct or the built-in tiny model) onto ``device``."""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per run would drown the comparison's bars

        path = Path(path)
        if not (path / "config.json").is_file():
            raise PolicyError(f"model path {path} has no config.json (not a Hugging Face checkpoint folder)")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        kwargs = {"trust_remote_code": True, "dtype": dtype or torch.float32}
        # LLaDA's remote code registers AutoModel (LLaDAModelLM returns logits); stock architectures use CausalLM.
        loader = AutoModel if getattr(config, "model_type", "") == "llada" else AutoModelForCausalLM
        model = loader.from_pretrained(path, **kwargs).to(device)
        # LLaDA's tokenizer declares no mask token; its config.json carries the id (126336), so no id is hard-coded.
        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else getattr(
            config, "mask_token_id", None)
        if mask_id is None:
            raise PolicyError(f"neither the tokenizer nor config.json in {path} declares a mask token id; a "
                              f"masked-diffusion model needs one")
        if tokenizer.eos_token_id is None:
            raise PolicyError(f"tokenizer in {path} declares no EOS token")
        return cls(model, tokenizer, mask_id=mask_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def parameters(self):  # noqa: ANN201
        return self.model.parameters()

    # ---- text <-> ids --------------------------------------------------------------------------------------------
    def encode_prompts(self, conversations: Sequence[list[dict[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the chat template (with the generation prompt) and left-pad.

        Returns ids [B, P] and a bool attention mask [B, P] (False on padding), on the policy's device.
        """
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)  # [B, P]
        mask = torch.zeros((len(encoded), width), dtype=torch.bool)  # [B, P]
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = True
        return ids.to(self.device), mask.to(self.device)

    def decode_completions(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        """Text of each completion's answer tokens (mask True), special tokens dropped."""
        return [self.tokenizer.decode(ids[keep].tolist(), skip_special_tokens=True)
                for ids, keep in zip(completion_ids.cpu(), completion_mask.cpu(), strict=True)]

    # ---- the model -----------------------------------------------------------------------------------------------
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mask-predictor logits for every position: ids [N, T] -> [N, T, V], at least float32."""
        return self._forward(self.model, ids, attention_mask)

    def reference_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen reference (the base model), for KL terms; see ``snapshot_reference``."""
        if self._reference is None:
            raise RuntimeError("snapshot_reference() must be called before reference_logits()")
        with torch.no_grad():
            return self._forward(self._reference, ids, attention_mask)

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current weights as the KL reference (d1: the base model with LoRA off)."""
        self._reference = copy.deepcopy(self.model).requires_grad_(False).eval()

    @staticmethod
    def _forward(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=attention_mask.long()).logits  # [N, T, V]
        return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()

    def token_logprobs(self, ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                       start: int, logits_fn=None) -> torch.Tensor:  # noqa: ANN001
        """log p(targets | ids) at positions ``start:``: ids [N, T], targets [N, T - start] -> [N, T - start]."""
        logits = (logits_fn or self.logits)(ids, attention_mask)[:, start:]  # [N, L, V]
        # gather - logsumexp instead of a full log_softmax: no second [N, L, V] tensor is kept for backward.
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, L]
        return picked - torch.logsumexp(logits, dim=-1)  # [N, L]
