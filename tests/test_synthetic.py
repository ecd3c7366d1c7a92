"""The embedded suite: seeded, split-disjoint, well-formed."""

from __future__ import annotations

import numpy as np
import pytest

from rmtllmf.data.pretext import PRETEXT_HEADS, pretext
from rmtllmf.data.synthetic import TASK_NAMES, TASKS, make_task
from rmtllmf.errors import InputError


@pytest.mark.parametrize("task", TASK_NAMES)
def test_task_is_seeded_and_well_formed(task):
    x, y = make_task(task, "train", 40, seed=3)
    x2, y2 = make_task(task, "train", 40, seed=3)
    assert x.shape == (40, 32, 32, 3)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert y.min() >= 0 and y.max() < len(TASKS[task][1])
    xt, _ = make_task(task, "test", 40, seed=3)
    assert not np.array_equal(x, xt)  # splits never share a random stream


def test_eight_tasks_with_distinct_label_sets():
    assert len(TASK_NAMES) == 8
    assert len({TASKS[t][1] for t in TASK_NAMES}) >= 7  # digits tasks share class names only


def test_pretext_labels_fit_their_heads():
    x, y = pretext(np.random.default_rng(0), 200)
    assert x.shape == (200, 32, 32, 3)
    for j, k in enumerate(PRETEXT_HEADS.values()):
        assert y[:, j].min() >= 0 and y[:, j].max() < k


def test_unknown_names_are_clear_errors():
    with pytest.raises(InputError, match="unknown task 'cifar'"):
        make_task("cifar", "train", 1)
    with pytest.raises(InputError, match="unknown split"):
        make_task("digits", "dev", 1)
