"""Image classification (paper §4.1): the task, its data sets, evaluation and prediction.

Importing this package registers the ``classification`` task and its data sets
(``digits``, ``cifar10``, ``imagefolder``) with the engine; every classification model's
builder is an attribute (``tdaf.classification.tdaf_resnet50``), as in every task package.
"""

from .data import DataInfo, build_datasets, data_info, dataset_list, open_split
from .metrics import ClassificationEvaluator
from .predict import predict
from .task import ClassificationTask, model_kwargs

# Every classification builder, as in the other task packages (tdaf.classification.tdaf_resnet50(num_classes=10)).
from ..models.senet import (
    cbam_resnet50, resnet18_w32, seresnet50, tdaf_cbam_resnet50, tdaf_resnet18_w32, tdaf_seresnet50,
)
from ..models.mobilenet import (
    mobilenetv1, tdaf_mobilenetv1,
)
from ..models.msconcat import (
    msconcat_resnet18_cifar, msconcat_resnet50, msconcat_resnet50_cifar,
)
from ..models.resnet import (
    resnet101, resnet101_cifar, resnet152, resnet152_cifar, resnet18, resnet18_cifar, resnet34, resnet34_cifar,
    resnet50, resnet50_cifar, resnext101_32x8d, resnext50_32x4d, tdaf_resnet101, tdaf_resnet101_cifar,
    tdaf_resnet152, tdaf_resnet152_cifar, tdaf_resnet18, tdaf_resnet18_cifar, tdaf_resnet34, tdaf_resnet34_cifar,
    tdaf_resnet50, tdaf_resnet50_cifar, tdaf_resnext101_32x8d, tdaf_resnext50_32x4d,
)
from ..models.vgg import (
    tdaf_vgg16, tdaf_vgg16_bn, tdaf_vgg16_bn_cifar, tdaf_vgg16_cifar, tdaf_vgg19, tdaf_vgg19_bn,
    tdaf_vgg19_bn_cifar, tdaf_vgg19_cifar, vgg16, vgg16_bn, vgg16_bn_cifar, vgg16_cifar, vgg19, vgg19_bn,
    vgg19_bn_cifar, vgg19_cifar,
)

__all__ = [
    "ClassificationTask", "ClassificationEvaluator", "predict", "model_kwargs",
    "DataInfo", "build_datasets", "data_info", "dataset_list", "open_split",
    "cbam_resnet50", "seresnet50", "tdaf_cbam_resnet50", "tdaf_seresnet50", "resnet18_w32", "tdaf_resnet18_w32",
    "mobilenetv1", "tdaf_mobilenetv1",
    "msconcat_resnet18_cifar", "msconcat_resnet50", "msconcat_resnet50_cifar", "resnet101", "resnet101_cifar",
    "resnet152", "resnet152_cifar", "resnet18", "resnet18_cifar", "resnet34", "resnet34_cifar", "resnet50",
    "resnet50_cifar", "resnext101_32x8d", "resnext50_32x4d", "tdaf_resnet101", "tdaf_resnet101_cifar",
    "tdaf_resnet152", "tdaf_resnet152_cifar", "tdaf_resnet18", "tdaf_resnet18_cifar", "tdaf_resnet34",
    "tdaf_resnet34_cifar", "tdaf_resnet50", "tdaf_resnet50_cifar", "tdaf_resnext101_32x8d", "tdaf_resnext50_32x4d",
    "tdaf_vgg16", "tdaf_vgg16_bn", "tdaf_vgg16_bn_cifar", "tdaf_vgg16_cifar", "tdaf_vgg19", "tdaf_vgg19_bn",
    "tdaf_vgg19_bn_cifar", "tdaf_vgg19_cifar", "vgg16", "vgg16_bn", "vgg16_bn_cifar", "vgg16_cifar", "vgg19",
    "vgg19_bn", "vgg19_bn_cifar", "vgg19_cifar",
]
