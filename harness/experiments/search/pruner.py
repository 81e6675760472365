"""Emergence-aware pruning: no trial is cut on the plateau before capability emergence."""
from __future__ import annotations


import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.experiments.search.trials import ATTR_EMERGENCE

log = logging.getLogger("harness.search")


class EmergenceAwarePruner(optuna.pruners.BasePruner):
    """Wraps a pruner so that no trial is pruned before ``margin`` times the latest emergence step
    of the complete trials (their ``emergence_step`` user attribute); until one has emerged, the
    wrapped pruner decides alone.

    Example::

        >>> pruner = EmergenceAwarePruner(optuna.pruners.MedianPruner(n_startup_trials=2), margin=1.5)
        >>> study = optuna.create_study(pruner=pruner)
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, *, margin: float = 1.5) -> None:
        if margin < 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.pruner, self.margin = pruner, margin

    def protected_until(self, study: optuna.Study) -> float:
        """The step before which no trial is pruned (0 when no complete trial has emerged)."""
        steps = [t.user_attrs[ATTR_EMERGENCE] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if ATTR_EMERGENCE in t.user_attrs]
        return self.margin * max(steps) if steps else 0.0

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.protected_until(study):
            return False
        return self.pruner.prune(study, trial)
