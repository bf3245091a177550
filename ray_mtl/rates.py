"""Sampling-rate rules: explicit, proportional, temperature and UniMax.

    w = rates({"eng-fra": 167130, "eng-ron": 14237}, MixtureConfig(rule="temperature",
                                                                   temperature=5.0))
    # {"eng-fra": 0.61, "eng-ron": 0.39}

Pure Python: the sampler (``ray_mtl.sampler``) draws examples at these rates.
"""

from __future__ import annotations

from ray_mtl.config import MixtureConfig, check_rates
from ray_mtl.errors import UserError


def rates(sizes: dict[str, int], cfg: MixtureConfig) -> dict[str, float]:
    """Sampling rates for every task in ``sizes`` (examples per task), summing to 1.

    explicit: ``cfg.rates`` (unnamed tasks get 0). proportional: ``p_i ∝ n_i``. temperature:
    ``p_i ∝ n_i^(1/T)``. unimax (Chung et al. 2023): a budget of ``B`` examples; tasks are visited
    from smallest to largest and each gets ``min(remaining / tasks_left, max_epochs * n_i)``;
    the allocations are normalised. Derived rules mix ``cfg.tasks`` (empty: all); others get 0.
    """
    expected = ", ".join(sorted(sizes))
    for name, n in sizes.items():
        if not (isinstance(n, int) and n >= 0):
            raise ValueError(f"size of task {name!r} must be an int >= 0, got {n!r}")
    if cfg.rule == "explicit":
        check_rates(cfg.rates, sorted(sizes), "mixture.rates")
        for name, r in cfg.rates.items():
            if r > 0 and sizes[name] == 0:
                raise UserError(f"mixture.rates.{name}: rate {r} for a task with no examples")
        weights = {name: float(r) for name, r in cfg.rates.items()}
    else:
        for i, name in enumerate(cfg.tasks):
            if name not in sizes:
                raise UserError(
                    f"mixture.tasks[{i}]: unknown task {name!r} (expected one of {expected})"
                )
        n = {name: sizes[name] for name in (cfg.tasks or sizes)}
        if cfg.rule == "proportional":
            weights = {name: float(v) for name, v in n.items()}
        elif cfg.rule == "temperature":
            weights = {name: v ** (1 / cfg.temperature) if v else 0.0 for name, v in n.items()}
        else:
            weights = _unimax(n, cfg.budget, cfg.max_epochs)
    total = sum(weights.values())
    if total <= 0:
        raise UserError(f"mixture: rule {cfg.rule!r} gives no task a positive rate")
    return {name: weights.get(name, 0.0) / total for name in sizes}


def _unimax(sizes: dict[str, int], budget: int, max_epochs: float) -> dict[str, float]:
    """UniMax allocations (examples per task) for a budget of ``budget`` examples."""
    alloc = {}
    remaining = float(budget)
    order = sorted(sizes, key=lambda name: (sizes[name], name))
    for i, name in enumerate(order):
        alloc[name] = min(remaining / (len(order) - i), max_epochs * sizes[name])
        remaining -= alloc[name]
    return alloc
