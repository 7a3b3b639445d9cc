"""spinert: training."""
