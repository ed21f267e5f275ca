"""The built-in tiny model's pretraining recipe: which task it serves and which data it learns from.

The model part (``harness/model/tiny.py``) knows no task; this recipe hands it the Sudoku instruction paragraph (one
token) and SFT pairs of generated Sudoku puzzles, never the test or validation puzzles, for a fixed number of steps
chosen to leave the base policy deliberately imperfect, so that RL has room to improve (``TinyConfig``). The model is
cached on disk under a key that hashes the config and seed, built when missing, and deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.model.policy import Policy
from harness.model.tiny import TinyConfig, build_model, build_tokenizer, cached_folder, save, sft
from tasks.sudoku import PUZZLE_LEAD, SUDOKU_INSTRUCTION, Sudoku, generate_puzzles

INSTRUCTIONS = (SUDOKU_INSTRUCTION + PUZZLE_LEAD,)
"""The fixed instruction paragraphs of the tasks the tiny model serves (one token each)."""


def tiny_tokenizer():  # noqa: ANN201
    """The tiny model's tokenizer: bytes, special tokens and the served tasks' instructions."""
    return build_tokenizer(INSTRUCTIONS)


PRETRAIN_THREADS = 2
"""torch threads of the pretraining, whatever the caller's: float32 sums depend on the thread count (the weights of
a 1-thread and a 2-thread pretraining differ by up to 0.012), and the cached model must not depend on which command
built it first. It still depends on the CPU family (see harness/runs/check.py)."""


def pretrain(cfg: TinyConfig, log: Callable[[int, float], None] | None = None,
             data_dir: str | Path | None = None) -> Policy:
    """A new tiny model trained with the SFT loss on generated Sudoku puzzles (``data_dir`` locates the test and
    validation puzzles, which are excluded), on ``PRETRAIN_THREADS`` threads."""
    import torch

    task = Sudoku(data_dir=data_dir)
    tokenizer = tiny_tokenizer()
    policy = Policy(build_model(cfg, len(tokenizer)), tokenizer)
    exclude = {item.prompt_text for item in task.load("test")} | {item.prompt_text for item in task.load("validation")}
    items = generate_puzzles(cfg.pretrain_steps * cfg.batch_size, seed=cfg.seed + 1, exclude=exclude)
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return sft(policy, [(task.prompt(item), task.sft_target(item)) for item in items], cfg, log)
    finally:
        torch.set_num_threads(threads)


def tiny_model_path(cfg: TinyConfig | None = None, log: Callable[[int, float], None] | None = None,
                    data_dir: str | Path | None = None) -> Path:
    """Folder of the pretrained tiny model for ``cfg``, pretraining and saving it (atomically) when missing."""
    cfg = cfg or TinyConfig()
    folder = cached_folder(cfg)
    if (folder / "config.json").is_file():
        return folder
    return save(pretrain(cfg, log, data_dir), cfg, folder)
