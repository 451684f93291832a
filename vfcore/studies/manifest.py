"""Every endpoint the studies of a profile train, so that they can be trained first, in
parallel (`vfcore.jobs.train_all`), before the notebooks run from the cache."""

from __future__ import annotations

from ..endpoints import Endpoint
from .linear import MODEL as LINEAR_MODEL
from .pruning import SWEEP_MODELS
from .setup import Setup
from .vanishing import FIG2B_MODELS
from .walkthrough import MODEL as WALKTHROUGH_MODEL
from .walkthrough import WIDTH as WALKTHROUGH_WIDTH

PAIR_MODELS = (LINEAR_MODEL, "linear5", "linear5_res", *FIG2B_MODELS, *SWEEP_MODELS)
"""Architectures trained as pairs by notebooks 01-07 (the pruning models once per seed)."""


def endpoints(setup: Setup) -> list[Endpoint]:
    """The endpoints of every study at `setup`'s profile, each once, cheapest models first."""
    profile = setup.profile
    seeds = range(1, profile.models + 1)
    jobs = [setup.job(model, seed) for model in dict.fromkeys(PAIR_MODELS) for seed in seeds]
    jobs += [setup.job(WALKTHROUGH_MODEL, seed, width=WALKTHROUGH_WIDTH) for seed in seeds]
    for dataset in profile.extra_datasets:
        jobs += [setup.job(model, seed, dataset) for model in ("vgg16", "vgg16_bn")
                 for seed in seeds]
    for values, models, name in ((profile.lr_sweep, profile.lr_sweep_models, "lr"),
                                 (profile.wd_sweep, profile.wd_sweep_models, "weight_decay")):
        for model, width in models:
            extra = {"width": width} if width is not None else {}
            jobs += [setup.job(model, seed, **{name: value}, **extra)
                     for value in values for seed in seeds]
    jobs += [setup.job("vgg16", seed, weight_decay=wd) for wd in profile.wd_sweep
             for seed in seeds]
    pop = profile.population
    jobs += [setup.job(pop.model, seed, **config) for config in pop.configurations
             for seed in range(1, pop.seeds + 1)]
    return list({job.key: job for job in jobs}.values())
