"""Contract tests every registered objective must pass (design rule 9): parametrized over ``objectives.OBJECTIVES``,
so a new objective is covered by adding its registry line.

The contract (objectives/base.py): ``prepare`` once per rollout batch, then ``loss_terms`` per update; the gradient of
an update is the sum of its terms' gradients, and the value the sum of their values.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch
from conftest import flat_gradient, loss_and_gradients, loss_value, make_batch, make_policy, perturb

import objectives
from objectives import OBJECTIVES

NAMES = sorted(OBJECTIVES)


def build(name: str, **overrides):
    """The objective with its default config, n_t cut to 2 where it has one (fast), plus ``overrides``."""
    config = OBJECTIVES[name]().config
    fields = {f.name for f in dataclasses.fields(config)}
    if "n_t" in fields:
        overrides = {"n_t": 2, **overrides}
    return OBJECTIVES[name](dataclasses.replace(config, **overrides))


def setup(name: str, seed: int = 0, micro_batch_size: int = 0, **overrides):
    """A tiny float64 policy, the objective (``build``) and a scored batch of 12 sequences whose objective passes
    take ``micro_batch_size`` sequences each (the run's setting, carried by the batch)."""
    policy = make_policy(hidden=16, layers=2, seed=seed)
    objective = build(name, **overrides)
    if objective.needs_reference:
        policy.snapshot_reference()
    return policy, objective, dataclasses.replace(make_batch(policy, seed=seed), micro_batch_size=micro_batch_size)


def run_update(policy, objective, prepared, inner: int, grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum of the term losses of one update (backward on each, as the trainer does) and the flat gradient; with
    ``grad=False`` the value alone, without backward."""
    if not grad:
        return torch.tensor(loss_value(objective, policy, prepared, inner), dtype=torch.float64), None
    loss, grads = loss_and_gradients(objective, policy, prepared, inner)
    return loss, flat_gradient(policy, grads)


@pytest.mark.parametrize("name", NAMES)
def test_objective_gives_a_finite_scalar_loss(name: str) -> None:
    policy, objective, batch = setup(name)
    loss, _ = run_update(policy, objective, objective.prepare(policy, batch, mu=1), inner=0)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert objective.name == name  # the registry key is the objective's own name


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter_of_the_model(name: str) -> None:
    policy, objective, batch = setup(name, seed=1)
    prepared = objective.prepare(policy, batch, mu=1)
    loss_and_gradients(objective, policy, prepared, 0)  # leaves each parameter's .grad as the optimizer sees it
    named = dict(policy.model.lm.named_parameters())
    # Every parameter takes part in the forward (embedding, each layer's attention/MLP/norms, final norm, head).
    missing = [n for n, p in named.items()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"{name}: no gradient for {missing}"
    assert "model.embed_tokens.weight" in named and "lm_head.weight" in named
    assert any(".layers.1." in n for n in named)  # the last layer is among those checked


@pytest.mark.parametrize("name", NAMES)
def test_the_same_row_seeds_give_the_identical_loss_twice(name: str) -> None:
    policy, objective, batch = setup(name, seed=2)
    first, g1 = run_update(policy, objective, objective.prepare(policy, batch, mu=1), inner=0)
    second, g2 = run_update(policy, objective, objective.prepare(policy, batch, mu=1), inner=0)
    assert float(first) == float(second)
    assert torch.equal(g1, g2)
    other = type(batch)(**{**batch.__dict__, "row_seeds": tuple(s + 1 for s in batch.row_seeds)})
    third, g3 = run_update(policy, objective, objective.prepare(policy, other, mu=1), inner=0)
    if getattr(objective, "draws_nothing", False):  # it scores the sampler's own trajectory: no draws to reseed
        assert torch.equal(g1, g3)
    else:
        assert not torch.equal(g1, g3)  # the rows' seeds drive the draws / masks: other seeds, another estimate


@pytest.mark.parametrize("name", NAMES)
def test_two_updates_per_batch_run_and_the_second_sees_the_new_parameters(name: str) -> None:
    policy, objective, batch = setup(name, seed=3)
    prepared = objective.prepare(policy, batch, mu=2)
    loss0, grad0 = run_update(policy, objective, prepared, inner=0)
    # Without a parameter change, update 1 is still on-policy: every ratio is 1 and every KL 0 (the ELBO objectives
    # replay the same draws; diffu-GRPO's old and reference log-probs of mask 1 were taken at these parameters), so
    # the value equals update 0's. The ratio-free objectives that draw fresh masks per update (SPG, wd1) give
    # another estimate of the same quantity instead, and the same one again when asked twice.
    same, _ = run_update(policy, objective, prepared, inner=1, grad=False)
    if getattr(objective, "resamples_each_update", False):
        again, _ = run_update(policy, objective, prepared, inner=1, grad=False)
        assert abs(float(same) - float(loss0)) > 1e-6 and float(again) == float(same)
    else:
        assert float(same) == pytest.approx(float(loss0), abs=1e-12)
    perturb(policy, 0.05, seed=3)
    loss1, grad1 = run_update(policy, objective, prepared, inner=1)
    assert torch.isfinite(loss1) and torch.isfinite(grad1).all()
    assert abs(float(loss1) - float(loss0)) > 1e-6
    assert grad1.norm() > 0 and not torch.allclose(grad0, grad1)


def same(a, b) -> bool:  # noqa: ANN001
    """Equal field for field, tensors element for element (a prepared batch and its copy)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


@pytest.mark.parametrize("name", NAMES)
def test_prepare_computes_every_old_policy_term_and_the_updates_change_nothing_of_it(name: str) -> None:
    # The old policy's terms are computed in ``prepare``, before update 0, never as a side effect of an update.
    policy, objective, batch = setup(name, seed=5)
    prepared = objective.prepare(policy, batch, mu=2)
    before = copy.deepcopy(prepared)
    run_update(policy, objective, prepared, inner=0)
    perturb(policy, 0.05, seed=5)
    run_update(policy, objective, prepared, inner=1)
    assert same(prepared, before)
    if hasattr(prepared, "old_terms"):  # the ELBO objectives; at mu = 1 only a KL needs them (update 0: theta_old)
        assert prepared.old_terms is not None
        assert (objective.prepare(policy, batch, mu=1).old_terms is None) == (not objective.needs_reference)


@pytest.mark.parametrize("name", NAMES)
def test_micro_batches_give_the_same_value_and_gradient(name: str) -> None:
    results = []
    for size in (0, 5):  # 12 sequences: one pass, or slices of 5, 5 and 2
        policy, objective, batch = setup(name, seed=4, micro_batch_size=size)
        assert batch.advantages.numel() == 12
        prepared = objective.prepare(policy, batch, mu=2)
        v0, g0 = run_update(policy, objective, prepared, inner=0)
        perturb(policy, 0.05, seed=4)
        v1, g1 = run_update(policy, objective, prepared, inner=1)  # off-policy too: stored terms are split alike
        results.append((v0, g0, v1, g1))
    (v0, g0, v1, g1), (w0, h0, w1, h1) = results
    for a, b in ((v0, w0), (v1, w1)):
        assert float(a) == pytest.approx(float(b), rel=1e-10, abs=1e-14)
    for a, b in ((g0, h0), (g1, h1)):
        assert float((a - b).norm() / a.norm()) < 1e-10


def _objective_classes() -> list[type]:
    """Every class defined in objectives/*.py that has a ``loss_terms`` method (the Objective protocol excepted)."""
    found = []
    for info in pkgutil.iter_modules(objectives.__path__):
        module = importlib.import_module(f"objectives.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or getattr(cls, "_is_protocol", False):
                continue
            if callable(getattr(cls, "loss_terms", None)):
                found.append(cls)
    return found


def test_every_objective_class_is_in_the_registry() -> None:
    classes = _objective_classes()
    assert len(classes) >= 3  # bgpo, vrpo, diffu-grpo at least: the walk finds something
    unregistered = [f"{c.__module__}.{c.__name__}" for c in classes if c not in OBJECTIVES.values()]
    assert not unregistered, f"objective classes missing from objectives.OBJECTIVES: {unregistered}"
    assert all(OBJECTIVES[name].name == name for name in OBJECTIVES)
