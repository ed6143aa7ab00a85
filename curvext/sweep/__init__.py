"""Sweeps of whole datasets: image folders streamed in chunks, each chunk's Parquet part written
exactly once (resumable after a kill, safe with concurrent processes), shared out over the
ranks of a ``torchrun`` job. ``calibrate_dataset`` and ``detect_dataset`` run Algorithm 2 over a
folder; ``profile_dataset`` computes principal-curvature profiles."""
from curvext.sweep.calibrate import calibrate_dataset
from curvext.sweep.detect import COLUMNS, DetectResult, detect_dataset
from curvext.sweep.engine import Chunks, Shard, SweepStatus, run_chunks
from curvext.sweep.parts import PartStore
from curvext.sweep.profile import ProfileResult, ProfileSettings, profile_dataset

__all__ = ["COLUMNS", "Chunks", "DetectResult", "PartStore", "ProfileResult", "ProfileSettings", "Shard",
           "SweepStatus", "calibrate_dataset", "detect_dataset", "profile_dataset", "run_chunks"]
