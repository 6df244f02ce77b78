"""tdaf: the Top-Down Attention Framework (Pang et al.) for the CNNs people already use.

Importing ``tdaf`` registers every model and every task (and their data sets), so any
checkpoint written by ``tdaf train`` can be rebuilt.
"""

from . import classification  # noqa: F401  (registers the classification task and its data sets)
from . import detection  # noqa: F401  (registers the detection task, its models and data sets)
from . import pose  # noqa: F401  (registers the pose task, its models and data sets)
from . import video  # noqa: F401  (registers the video task, its models and data sets)
from .attention import record_attention
from .engine.init_from import InitFromReport, init_from
from .hub import load_from_folder, save_for_hf
from .inference import fold_batchnorm
from .errors import UserError
from .layers import (
    ANAR, FrozenMultiFlowBatchNorm, MultiFlowBatchNorm, SyncMultiFlowBatchNorm, convert_sync_batchnorm,
    convert_to_mfbn, create_anar, freeze_mfbn,
)
from .models import (
    BackboneWithFPN, FeatureMaps, ModelArgumentError, TDAFClassifier, create_model, is_model, list_models, model_cfg,
    register_model,
)
from .r2dns import TDAF_DEFAULTS, R2DNS, StageNet, init_attention, overlap_flows

__version__ = "0.1.0"

__all__ = [
    "R2DNS", "StageNet", "TDAF_DEFAULTS", "ANAR", "MultiFlowBatchNorm", "FrozenMultiFlowBatchNorm", "TDAFClassifier",
    "SyncMultiFlowBatchNorm", "FeatureMaps", "BackboneWithFPN", "convert_to_mfbn", "convert_sync_batchnorm",
    "freeze_mfbn", "create_anar", "create_model",
    "list_models", "is_model", "model_cfg", "register_model", "record_attention", "overlap_flows", "init_attention",
    "ModelArgumentError", "UserError", "init_from", "InitFromReport", "save_for_hf", "load_from_folder", "__version__",
    "fold_batchnorm",
]
