"""A search's trials as the storage holds them: their user attributes, and which of them count."""
from __future__ import annotations


import logging

import optuna
from optuna.trial import FrozenTrial, TrialState


log = logging.getLogger("harness.search")


ATTR_RUN_ID = "mlflow_run_id"


ATTR_OUT_DIR = "out_dir"


ATTR_HASH = "config_hash"


ATTR_HEARTBEAT = "heartbeat"  # unix time, refreshed while the trial runs


ATTR_ERROR = "error"  # the trial raised: it is finished (FAIL) and counts towards n_trials


ATTR_INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: FAIL, not counted, queued again on the next start


ATTR_RETRY_OF = "retry_of"  # number of the trial this one repeats


ATTR_RETRIES = "retries"


ATTR_EMERGENCE = "emergence_step"  # of a complete trial (absent when it did not emerge)


ATTR_SURPLUS = "surplus"  # started after the total was reached (a race between workers): FAIL, not counted


ATTR_SEARCH_ID = "harness.search_id"


ATTR_METRIC = "harness.metric"


MAX_RETRIES = 2
"""A trial whose worker dies this many times more (e.g. killed for memory) is failed for good."""


def counts(t: FrozenTrial) -> bool:
    """Does this finished trial count towards ``n_trials``? Complete, pruned, or failed by its own error."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and bool(t.user_attrs.get(ATTR_ERROR)) and not t.user_attrs.get(ATTR_SURPLUS)


def claims_a_slot(t: FrozenTrial) -> bool:
    """Finished and counted, or still to run (running, or queued)."""
    return counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)


def tally(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {
        "counted": sum(counts(t) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and counts(t) for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
    }
