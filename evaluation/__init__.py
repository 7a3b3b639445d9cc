"""spinert: evaluation."""
