"""Task vectors and merging (torch, imported at its first use: the linear merges between files
need none; knows nothing of radios).

* :class:`TaskVector` (eq. 1): build from checkpoints tensor by tensor, arithmetic, cosine,
  flatten for the channel, safetensors in and out;
* :data:`MERGE_METHODS`: ``task-arithmetic`` (eq. 6), ``average``, ``ties``, ``dare``, one
  signature, each entry holding its options model and, if linear, its weights;
  :func:`merge_task_vectors` (in memory) and :func:`merge_checkpoints` (streaming);
* :func:`select_lambda`: validation grid search of ``lambda_N``.
"""

from rmtllmf.fusion.checkpoint import LazyCheckpoint, load_state_dict, save_state_dict
from rmtllmf.fusion.drivers import (
    LambdaSearch,
    lambda_values,
    merge_checkpoints,
    merge_task_vectors,
    select_lambda,
)
from rmtllmf.fusion.method_registry import (
    MERGE_METHODS,
    MergeConfig,
    MergeMethod,
    NoOptions,
    get_method,
    linear_weights,
    register,
)
from rmtllmf.fusion.methods import DareOptions, TiesOptions
from rmtllmf.fusion.params import ALL_PARAMS, ParamFilter
from rmtllmf.fusion.task_vector import TaskVector, VectorLayout, cosine_matrix

__all__ = [
    "ALL_PARAMS",
    "MERGE_METHODS",
    "DareOptions",
    "LambdaSearch",
    "LazyCheckpoint",
    "MergeConfig",
    "MergeMethod",
    "NoOptions",
    "ParamFilter",
    "TaskVector",
    "TiesOptions",
    "VectorLayout",
    "cosine_matrix",
    "get_method",
    "lambda_values",
    "linear_weights",
    "load_state_dict",
    "merge_checkpoints",
    "merge_task_vectors",
    "register",
    "save_state_dict",
    "select_lambda",
]
