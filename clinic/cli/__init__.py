"""The ``clinic`` command line."""
