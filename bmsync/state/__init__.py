"""What a node keeps in its state directory: its role and epochs, the
sender lock, the peer's acknowledged manifest, pause and backup records."""
