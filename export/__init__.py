"""spinert: export."""
