"""spinert: bench."""
