"""Hardware targets as data, and the pipeline each one gets.

Example:
    >>> from fxopt.targets import get_target, pipeline_for, OptimizeOptions
    >>> get_target("h100").peak("bf16")
    989400000000000.0
"""

from fxopt.targets.cpu import calibrate_cpu, detect_cpu
from fxopt.targets.gpu_calibration import GpuMeasurements, calibrate_gpu, target_from_measurements
from fxopt.targets.gpus import tf32_allowed
from fxopt.targets.pipeline import STAGES, OptimizeOptions, Stage, pipeline_for, resolve_precision
from fxopt.targets.registry import TARGETS, get_target, register_target
from fxopt.targets.spec import LoweringRecipe, Target

__all__ = ["STAGES", "TARGETS", "GpuMeasurements", "LoweringRecipe", "OptimizeOptions", "Stage", "Target",
           "calibrate_cpu", "calibrate_gpu", "detect_cpu", "get_target", "pipeline_for", "register_target",
           "resolve_precision", "target_from_measurements", "tf32_allowed"]
