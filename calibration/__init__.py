"""spinert: calibration."""
