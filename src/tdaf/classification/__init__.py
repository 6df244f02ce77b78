"""Image classification (paper §4.1): the task, its data sets, evaluation and prediction.

Importing this package registers the ``classification`` task and its data sets
(``digits``, ``cifar10``, ``imagefolder``) with the engine.
"""

from .data import DataInfo, build_datasets, data_info, dataset_list, open_split
from .evaluate import evaluate_checkpoint
from .metrics import ClassificationEvaluator
from .predict import predict
from .task import ClassificationTask, model_kwargs

__all__ = [
    "ClassificationTask", "ClassificationEvaluator", "evaluate_checkpoint", "predict", "model_kwargs",
    "DataInfo", "build_datasets", "data_info", "dataset_list", "open_split",
]
