"""tdaf: the Top-Down Attention Framework (Pang et al.) for the CNNs people already use."""

from . import classification  # noqa: F401  (registers the classification task and its data sets)
from .attention import record_attention
from .layers import ANAR, MultiFlowBatchNorm, convert_to_mfbn, create_anar
from .models import TDAFClassifier, create_model, is_model, list_models, model_cfg, register_model
from .r2dns import R2DNS, StageNet

__version__ = "0.1.0"

__all__ = [
    "R2DNS", "StageNet", "ANAR", "MultiFlowBatchNorm", "TDAFClassifier",
    "convert_to_mfbn", "create_anar", "create_model", "list_models", "is_model", "model_cfg",
    "register_model", "record_attention", "__version__",
]
