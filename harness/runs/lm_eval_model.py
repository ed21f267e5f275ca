"""The harness's policy as an lm-evaluation-harness model, registered as ``dllm-harness``.

``harness lm-eval`` runs it; from Python, importing this module registers it for ``lm_eval.simple_evaluate(
model="dllm-harness", model_args="pretrained=FOLDER,rollout_gen_length=256,...")``; lm-eval's own command line loads
no plugin models, so ``python -m harness.runs.lm_eval_model run --model dllm-harness --model_args ...`` is that
command line with this model registered. ``pretrained`` is 'tiny' or a checkpoint folder (LLaDA, Dream, an
exported policy, loaded natively: no remote code); every other model argument is a field of ``LmEvalModelConfig``
(``lm_requests.py``) or one of ``POLICY_KEYS``, by the same name as its `harness lm-eval` flag; an unknown one is a
ValueError naming it.

Under ``accelerate launch`` every process loads the model on its own device and answers the share of the requests
lm-eval's evaluator gives it (``rank``, ``world_size``); the evaluator gathers the metrics on process 0 through
``gather_object``. Every loglikelihood answer is also kept in ``likelihoods`` (the ELBO, its standard error, the draws
and tokens) for the caller to write beside lm-eval's results.

Chat templates: lm-eval calls ``apply_chat_template`` when asked to (``--apply_chat_template``); a context that a
template made already holds its special tokens, so the model encodes it without adding any; a plain context gets
the tokenizer's (BOS where it adds one), as lm-eval's Hugging Face model does. lm-eval does not tell the model which
it did, so the model notes the call: one model object per evaluation (`harness lm-eval` builds one).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from harness.loop.lm_requests import (
    LmEvalModelConfig,
    cut_at,
    encode,
    generate_texts,
    pair_likelihood,
    rolling_likelihood,
    split_pair,
)
from harness.model.device import process_device, process_state, resolve_device
from harness.model.policy import Policy, PolicyConfig
from harness.model.structs import stream_seed
from harness.runs.settings import parse_values, replace, setting_of, spec_settings

MODEL_NAME = "dllm-harness"
POLICY_KEYS = ("dtype", "logits_chunk", "trust_remote_code")
"""The loading settings (``PolicyConfig``) a model argument may set; LoRA and checkpointing are training's."""


@dataclass(frozen=True)
class ModelArgs:
    """Everything ``--model_args`` may set besides ``pretrained``: how requests are answered and how the checkpoint
    loads."""

    model_args: LmEvalModelConfig = field(default_factory=LmEvalModelConfig)
    """How requests are answered."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """How the checkpoint loads (``POLICY_KEYS`` only)."""


def parse_model_args(values: dict[str, Any]) -> ModelArgs:
    """``ModelArgs`` from lm-eval's parsed ``--model_args`` (text or numbers); ValueError naming a bad key or value."""
    table = {key: s for key, s in spec_settings(ModelArgs).items() if s.path[0] != "policy" or key in POLICY_KEYS}
    args = ModelArgs()
    for key, raw in values.items():
        setting = setting_of("--model_args", key, table)
        parsed = parse_values(setting, raw if isinstance(raw, str) else [raw], f"--model_args {key}")
        args = replace(args, setting.path, parsed if setting.is_list else parsed[0])
    args.model_args.validate()
    return args


@register_model(MODEL_NAME)
class HarnessLM(LM):
    """lm-eval's model interface over ``Policy``: generation through the one sampler, log-likelihood through the ELBO
    estimators (module docstring)."""

    def __init__(self, pretrained: str = "tiny", device: str | None = None, data_dir: str | None = None,
                 batch_size: int | str | None = None, max_batch_size: int | None = None, **model_args: Any) -> None:
        from harness.runs.pipeline import resolve_model

        if batch_size not in (None, "auto") and "batch_size" not in model_args:
            model_args["batch_size"] = batch_size  # lm-eval's --batch_size, unless the model args set it
        args = parse_model_args(model_args)
        dev = process_device(resolve_device(device or "auto"))
        policy = Policy.from_pretrained(resolve_model(str(pretrained), data_dir=data_dir), device=dev,
                                        config=args.policy)
        self._setup(policy, args.model_args)

    @classmethod
    def from_policy(cls, policy: Policy, config: LmEvalModelConfig | None = None) -> HarnessLM:
        """A model over a policy already in memory (one being trained, a test's)."""
        config = config or LmEvalModelConfig()
        config.validate()
        model = cls.__new__(cls)
        model._setup(policy, config)
        return model

    def _setup(self, policy: Policy, config: LmEvalModelConfig) -> None:
        super().__init__()
        self.policy, self.config = policy, config
        state = process_state(policy.device)
        self._rank, self._world_size, self._device = state.process_index, state.num_processes, policy.device
        self.templated = False
        """Whether lm-eval has applied the chat template to the contexts (module docstring)."""
        self.likelihoods: list[dict[str, Any]] = []
        """Every loglikelihood answer of this process: request key, ELBO, standard error, draws, tokens, greedy."""

    # ---- chat templates ------------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.policy.source or "in-process").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.policy.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.templated = True
        return self.policy.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                                         tokenize=False)

    # ---- the three requests --------------------------------------------------------------------------------------
    def _seeds(self, requests: list) -> list[int]:
        """Each request's seed: its task, document and choice, and which repeat of the same request it is."""
        seen: Counter = Counter()
        seeds = []
        for request in requests:
            key = (request.task_name or "", request.doc_id, request.idx)
            seeds.append(stream_seed(self.config.seed, *key, seen[key]))
            seen[key] += 1
        return seeds

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        tokenizer = self.policy.tokenizer
        contexts = [encode(tokenizer, request.args[0], not self.templated) for request in requests]
        width = max((len(c) for c in contexts), default=0)
        if self.world_size > 1:  # every process pads to the widest of all (lm-eval gives each the same count)
            width = int(self.all_gather(torch.tensor([width], device=self.device)).max())
        texts = generate_texts(self.policy, contexts, self._seeds(requests), self.config, width)
        return [cut_at(text, request.args[1].get("until") or []) for text, request in zip(texts, requests,
                                                                                        strict=True)]

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        answers = []
        for request, seed in zip(requests, self._seeds(requests), strict=True):
            context, continuation = split_pair(self.policy.tokenizer, *request.args, not self.templated)
            result = pair_likelihood(self.policy, context, continuation, seed, self.config)
            self._log(request, result)
            answers.append((result.elbo, result.is_greedy))
        return answers

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        window = self.config.max_length or int(getattr(self.policy.predictor.base().config,
                                                       "max_position_embeddings", 2048))
        totals = []
        for request, seed in zip(requests, self._seeds(requests), strict=True):
            tokens = encode(self.policy.tokenizer, request.args[0], False)
            results = rolling_likelihood(self.policy, tokens, seed, self.config, window)
            for result in results:
                self._log(request, result)
            totals.append(sum(result.elbo for result in results))
        return totals

    def _log(self, request: Any, result: Any) -> None:
        self.likelihoods.append({"task": request.task_name, "doc_id": request.doc_id, "idx": request.idx,
                                 **dataclasses.asdict(result)})

    # ---- data parallel (lm-eval's evaluator shards the documents and gathers the metrics) --------------------------
    def all_gather(self, tensor):  # noqa: ANN001, ANN201
        from accelerate.utils import gather

        return gather(tensor) if self.world_size > 1 else tensor

    def gather_object(self, obj: Any, dst: int = 0) -> list | None:
        from accelerate.utils import gather_object

        if self.world_size == 1:
            return [obj]
        gathered = gather_object([obj])  # every process gets the list; lm-eval reads it on dst only
        return gathered if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            process_state(self.device).wait_for_everyone()


if __name__ == "__main__":  # lm-eval's own command line, with this model registered (module docstring)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
