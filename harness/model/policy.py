"""The one dLLM policy wrapper every objective, task and sampler goes through.

It wraps a masked-diffusion model (a bidirectional mask predictor, ``predictor.MaskPredictor``) and its tokenizer,
and owns the token ids that give the model its diffusion meaning (mask, EOS, pad, end of turn). Reference: LLaDA
`generate.py` and `get_log_likelihood.py` (the model is called on [prompt ; partially masked completion] and
predicts every token). Checkpoints load natively by family (``families.py``: LLaDA, Dream, stock transformers), in
float32 or bfloat16, optionally with LoRA adapters through peft and gradient checkpointing (``PolicyConfig``). A
LoRA adapter folder written by ``export.py`` (peft's files plus ``base_model.json``) loads as its base with the
adapters applied. ``export.py`` writes a policy back out as folders other software loads.

Departures from LLaDA's scripts, each deliberate:
1. Prompts are left-padded with a pad id distinct from the mask id and an attention mask is always passed (d1 pads
   with EOS and passes none, so pad tokens leak into bidirectional attention: pitfall P6).
2. Log-probabilities and sampling logits are float32 or wider whatever the weights' dtype (pitfall P4).
3. The model stays in eval mode: LLaDA-style models have no dropout, and eval mode guarantees that the old-policy and
   current-policy passes of an on-policy update are bit-identical (pitfall P3). Gradient checkpointing needs train
   mode in transformers, so it is allowed only for a model without dropout, and LoRA adapters carry none.
4. The KL reference under LoRA is the same model with its adapters disabled (d1's reference), not a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.model.bounds import check_bounds
from harness.model.families import HF, Family, family_of, load_model, read_adapter_pointer, read_config
from harness.model.predictor import MaskPredictor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
LORA_INIT_SEED = 0
"""Seed of the LoRA adapters' initialisation (peft draws A from the global RNG; B starts at 0, so the initial policy
is the base model whatever A is). Fixed, so that two processes building the same run (a resume, a rerun, the ranks
of a data-parallel run) build the same adapters."""
END_OF_TURN = "<|eot_id|>"
"""LLaDA-8B-Instruct's end-of-turn token (id 126348): a completion ends at it or at EOS, whichever comes first."""


@dataclass(frozen=True)
class PolicyConfig:
    """How a checkpoint is loaded and trained: precision, adapters, memory savers."""

    dtype: str = field(default="float32", metadata={"choices": tuple(DTYPES)})
    """Weights' dtype: float32 or bfloat16 (log-softmax, ELBO sums and ratios stay float32 either way)."""
    lora_r: int = field(default=0, metadata={"min": 0})
    """LoRA rank through peft; 0 trains every weight. d1 trains LLaDA with r = 128, alpha = 64."""
    lora_alpha: float = 64.0
    """LoRA scale numerator (the update is alpha / r times the adapter's product)."""
    lora_targets: tuple[str, ...] = ()
    """Module names that get adapters; () = the family's (d1's q, k, v, o, gate, up, down projections)."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in backward (transformers' checkpointing, non-reentrant)."""
    logits_chunk: int = field(default=1024, metadata={"min": 0})
    """Tokens whose logits exist at once when log-probabilities are taken (0 = all at once); see predictor.py."""
    trust_remote_code: bool = False
    """Run the checkpoint folder's own modelling code instead of the native family loader (families.py)."""

    def validate(self) -> None:
        """The fields' bounds (their metadata); ValueError naming the field."""
        check_bounds(self)


class PolicyError(ValueError):
    """A model folder or tokenizer that cannot serve as a masked-diffusion policy."""


class Policy:
    """A masked-diffusion language model plus tokenizer, with the token ids the sampler and the ELBO need."""

    def __init__(self, model: nn.Module, tokenizer, mask_id: int | None = None, family: Family = HF,  # noqa: ANN001
                 logits_chunk: int = 0) -> None:
        self.model = model if isinstance(model, MaskPredictor) else MaskPredictor(model, family, logits_chunk)
        self.model.eval()
        self.tokenizer = tokenizer
        self.mask_id = int(mask_id if mask_id is not None else tokenizer.mask_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        if self.pad_id == self.mask_id:
            raise PolicyError(f"pad id {self.pad_id} equals the mask id: padding would read as masked tokens")
        turn = tokenizer.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tokenizer.get_vocab() else None
        self.stop_ids = tuple(sorted({self.eos_id} | ({int(turn)} if turn is not None else set())))
        """Token ids that end a completion: EOS and, where the tokenizer has it, LLaDA's end of turn."""
        self._reference: MaskPredictor | None = None
        self.source: Path | None = None
        """The checkpoint folder the weights were loaded from (an adapter's base folder); None when built in-process.
        An adapter export names it as the base, and ``export_llada_layout`` reuses a LLaDA folder's config.json."""

    # ---- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                        config: PolicyConfig | None = None) -> Policy:
        """Load a local checkpoint folder (LLaDA, Dream, the built-in tiny model) onto ``device`` (``dtype``, when
        given, overrides ``config.dtype``). An exported adapter folder loads its base (``base_model.json``) and
        applies the adapters, which train when the policy trains."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per run would drown the comparison's bars
        config = config or PolicyConfig()
        config.validate()
        path = Path(path)
        weights, raw, adapter = resolve_folder(path, config)
        family = family_of(raw)
        tokenizer = load_tokenizer(path, config.trust_remote_code)
        lm = load_model(weights, family, dtype or DTYPES[config.dtype], config.trust_remote_code).to(device)
        # LLaDA's tokenizer declares no mask token; its config.json carries the id (126336), so no id is hard-coded.
        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else raw.get("mask_token_id")
        if mask_id is None:
            raise PolicyError(f"neither the tokenizer nor config.json in {path} declares a mask token id; a "
                              f"masked-diffusion model needs one")
        if tokenizer.eos_token_id is None:
            raise PolicyError(f"tokenizer in {path} declares no EOS token")
        policy = cls(adapt(lm, family, config, adapter), tokenizer, mask_id=mask_id, family=family,
                     logits_chunk=config.logits_chunk)
        policy.model.train(config.gradient_checkpointing)  # transformers checkpoints only in train mode
        policy.source = weights.resolve()
        return policy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def predictor(self) -> MaskPredictor:
        """The mask predictor below accelerate's wrapper (DDP / FSDP hold it as ``.module`` while training)."""
        return getattr(self.model, "module", self.model)

    @property
    def has_adapters(self) -> bool:
        return hasattr(self.predictor.lm, "disable_adapter")

    def parameters(self):  # noqa: ANN201
        return self.model.parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (the adapters only, under LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self, folder: Path) -> None:
        """Weights (the transformers model, under its own weight names: transformers 5 would otherwise write a LLaDA
        policy under LLaDA's names beside a Llama config.json) and tokenizer, in Hugging Face's layout. For an
        export other software loads, see ``export.py``."""
        self.predictor.lm.save_pretrained(folder, save_original_format=False)
        self.tokenizer.save_pretrained(folder)
    # ---- text <-> ids --------------------------------------------------------------------------------------------
    def encode_prompts(self, conversations: Sequence[list[dict[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the chat template (with the generation prompt) and left-pad.

        Returns ids [B, P] and a bool attention mask [B, P] (False on padding), on the policy's device.
        """
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        return self.pad_left([self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])

    def pad_left(self, encoded: Sequence[Sequence[int]], width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists left-padded to the widest (or to ``width`` when wider): ids [B, P] and a bool attention
        mask [B, P] (False on padding), on the policy's device."""
        width = max(width, *(len(e) for e in encoded))
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
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice = slice(None)) -> torch.Tensor:
        """Mask-predictor logits at ``positions``: ids [N, T] -> [N, l, V], at least float32."""
        return self.model(ids, attention_mask, positions)

    def token_logprobs(self, ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
                       start: int, reference: bool = False, exclude_mask: bool = False) -> torch.Tensor:
        """log p(targets | ids) at positions ``start:``: ids [N, T], targets [N, T - start] -> [N, T - start];
        ``reference``: under the frozen KL reference (see ``snapshot_reference``), without gradients;
        ``exclude_mask``: over the vocabulary without the mask token, the sampler's support (the trajectory
        objectives score the sampler's own conditional)."""
        exclude = self.mask_id if exclude_mask else None
        if not reference:
            return self.model(ids, attention_mask, slice(start, None), targets, exclude=exclude)
        with torch.no_grad():
            if self.has_adapters:
                return self.model(ids, attention_mask, slice(start, None), targets, adapters_off=True,
                                  exclude=exclude)
            if self._reference is None:
                raise RuntimeError("snapshot_reference() must be called before reference log-probabilities")
            return self._reference(ids, attention_mask, slice(start, None), targets, exclude=exclude)

    def snapshot_reference(self) -> None:
        """Freeze the KL reference: under LoRA the base model is the adapters disabled (nothing to copy, d1's
        reference); otherwise a frozen copy of the current weights."""
        if not self.has_adapters:
            self._reference = copy.deepcopy(self.model).requires_grad_(False).eval()


def load_tokenizer(path: Path, trust_remote_code: bool = False):  # noqa: ANN201
    """The folder's tokenizer; a custom tokenizer class (Dream's) falls back to its tokenizer.json."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError:
        if not (path / "tokenizer.json").is_file():
            raise
        return PreTrainedTokenizerFast.from_pretrained(path)


def resolve_folder(path: Path, config: PolicyConfig) -> tuple[Path, dict, Path | None]:
    """Where a model folder's weights are, its config.json, and the adapter folder to apply (None for a model
    folder): an exported adapter folder reads as its base's config.json with the adapter's mask id."""
    pointer = read_adapter_pointer(path)
    if pointer is None:
        if not (path / "config.json").is_file():
            hint = " and no base_model.json beside its adapter" if (path / "adapter_config.json").is_file() else ""
            raise PolicyError(f"model path {path} has no config.json{hint} (not a Hugging Face checkpoint folder)")
        return path, read_config(path), None
    if not (pointer.base / "config.json").is_file():
        raise PolicyError(f"adapter folder {path}: its base {pointer.base} (base_model.json) has no config.json")
    raw = {**read_config(pointer.base), "mask_token_id": pointer.mask_token_id}
    if family_of(raw).name != pointer.family:
        raise PolicyError(f"adapter folder {path} was trained on a {pointer.family} model; its base "
                          f"{pointer.base} now reads as {family_of(raw).name}")
    if config.lora_r:
        raise PolicyError(f"{path} is a LoRA adapter folder (its adapters train); lora_r={config.lora_r} would "
                          f"add a second set: leave lora_r at 0")
    return pointer.base, raw, path


def adapt(lm: nn.Module, family: Family, config: PolicyConfig, adapter: Path | None = None) -> MaskPredictor:
    """The loaded model with gradient checkpointing and LoRA adapters as configured (or the trained ones of an
    ``adapter`` folder), as a mask predictor."""
    if config.gradient_checkpointing:
        dropout = getattr(lm.config, "attention_dropout", 0.0) or 0.0
        if dropout > 0:
            raise PolicyError(f"gradient checkpointing needs train mode, and the model has attention dropout "
                              f"{dropout}: old- and current-policy passes would differ")
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5's name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        no_input_grad_hook(lm)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter, is_trainable=True)
        no_input_grad_hook(lm.get_base_model())
    elif config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = list(config.lora_targets or family.lora_targets)
        device = next(lm.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                   device_type=device.type if device.type == "cuda" else "cuda"):
            torch.manual_seed(LORA_INIT_SEED)  # the same adapters in every process and every run of a config
            lm = get_peft_model(lm, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                               target_modules=targets))
        no_input_grad_hook(lm.get_base_model())
    return MaskPredictor(lm, family, config.logits_chunk)


def no_input_grad_hook(lm: nn.Module) -> None:
    """Remove the hook transformers and peft put on the input embeddings to make their output require grad when
    checkpointing is on. Only reentrant checkpointing needs it (ours is non-reentrant); under no_grad (old-policy,
    reference and rollout passes) it makes graph-less tensors that require grad, which torch's module tracker (the
    memory accounting) cannot follow."""
    if hasattr(lm, "disable_input_require_grads"):
        lm.disable_input_require_grads()
