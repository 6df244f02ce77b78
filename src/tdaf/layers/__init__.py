"""Reusable TDAF layers: ANAR attention, MFBN normalisation, the between-flow down-sampling."""

from .anar import ANAR, ANAR_SPECS, ANARSpec, anar_names, create_anar
from .downsample import DOWNSAMPLE_MODES, Downsample
from .mfbn import (
    FrozenMultiFlowBatchNorm, MultiFlowBatchNorm, SyncMultiFlowBatchNorm, convert_sync_batchnorm, convert_to_mfbn,
    freeze_mfbn, mfbn_modules, set_flow,
)

__all__ = [
    "ANAR", "ANARSpec", "ANAR_SPECS", "anar_names", "create_anar",
    "Downsample", "DOWNSAMPLE_MODES",
    "MultiFlowBatchNorm", "SyncMultiFlowBatchNorm", "FrozenMultiFlowBatchNorm", "convert_to_mfbn", "freeze_mfbn",
    "convert_sync_batchnorm", "mfbn_modules", "set_flow",
]
