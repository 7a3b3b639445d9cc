"""spinert runtime: CT in, labelled vertebrae out. Never imports torch at module level."""
