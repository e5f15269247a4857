"""Stage 2, check: the data (refused when changed), the code and the environment, before anything runs.

In process and under torchrun every recorded dataset is re-hashed (the opened datasets are handed on
to the run), the code is compared with the recorded code, and the two environments are compared and
a verdict predicted from them. A re-execution re-hashes the recorded dtool datasets; its code is the
stored code (digested in the plan), and its environment is compared after it ran (:mod:`.compare`).

Example:
    >>> check(plan(Request.of("/models/digits"))).code.status       # doctest: +SKIP
    'same'
"""

from __future__ import annotations

import time

from reprodl.errors import IntegrityError
from reprodl.modeldataset.verify import check_data
from reprodl.reproduction.code import check_code, check_patch
from reprodl.reproduction.datamap import relocated
from reprodl.reproduction.environment import check_environment
from reprodl.reproduction.pipeline.state import Checks, Plan
from reprodl.reproduction.reexec import check_recorded_data, code_check
from reprodl.store import StoredDataSet


def check(plan: Plan) -> Checks:
    """What was checked before training; :class:`IntegrityError` when the training data changed."""
    t_data = time.perf_counter()
    if plan.reexecution is not None:
        data = check_recorded_data(relocated(plan.record, plan.where), plan.model_ds)
        return Checks(data, code_check(plan.reexecution), [], None, {}, time.perf_counter() - t_data)
    record = plan.judged
    opened: dict[str, StoredDataSet] = {}
    data = check_data(record, plan.model_ds, opened=opened)
    seconds = time.perf_counter() - t_data
    problems = [p for c in data for p in c.problems]
    if problems:
        raise IntegrityError(
            "refusing to reproduce: the training data changed since training:\n  " + "\n  ".join(problems),
            problems=problems,
        )
    code = check_patch(record, plan.model_ds, check_code(record))
    environment, expectation = check_environment(record)  # the prediction, made before re-running
    return Checks(data, code, environment, expectation, opened, seconds)
