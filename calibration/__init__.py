"""Camera intrinsics, INT8 calibration data and surprise baselines (see the export pipeline issue)."""
