"""Recording: frame synchronization, the recording session, raw bags."""
