"""spinert: bridge."""
