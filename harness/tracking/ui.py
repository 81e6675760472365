"""What MLflow's UI shows when a user opens a harness experiment: the model-training view, and a saved
view of the runs table that lists every cell (or trial) with its curves.

MLflow 3 opens an experiment in its GenAI view unless the link asks for the model-training one, and
its runs table folds child runs (a study's cells) under their parent: the charts then show only the
parent, which has no curves. The harness therefore saves, in each experiment it creates, a view
(MLflow's own "Views" menu, an experiment tag ``mlflow.sharedViewState.<key>``) that groups the runs
by :data:`~harness.tracking.tags.KIND`, so the cells are listed one colour each and the metric
charts plot them; :func:`experiment_url` is the link that opens it in the model-training view on the
charts. The view is saved once: a user who overrides it in the UI keeps their version.
"""
from __future__ import annotations

import json
import time
import urllib.parse

from harness.tracking import tags

VIEW_KEY = "harness-cells"
"""The saved view's key (in the link, ``viewStateShareKey=``)."""
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
"""The experiment tag MLflow's UI reads the saved view from."""
VIEW_NAME = "cells (harness)"


def cells_view() -> str:
    """The tag's value, as MLflow's UI writes a saved view: name, times and the view's state as JSON."""
    state = {
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": tags.KIND}]},
        "useGroupedValuesInCharts": False,  # one curve per run, not the group's average
        "hideEmptyCharts": True,
    }
    now = int(time.time() * 1000)
    return json.dumps({"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def experiment_tags() -> dict[str, str]:
    """The tags every experiment the harness creates carries (the UI's kind and the saved view)."""
    return {tags.EXPERIMENT_KIND: tags.MODEL_TRAINING, VIEW_TAG: cells_view()}


def experiment_url(server: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs on the saved view, its charts, in the model-training view."""
    query = urllib.parse.urlencode({"viewStateShareKey": VIEW_KEY, "compareRunsMode": "CHART",
                                    "workflowType": "machine_learning"})
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
