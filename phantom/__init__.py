"""spinert: phantom."""
