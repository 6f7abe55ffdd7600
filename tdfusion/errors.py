"""The one exception type the toolkit raises for bad input.

The command line prints its message as a single ``error: ...`` line and exits with a
non-zero status; library users catch it like any other exception.
"""


class TDFusionError(Exception):
    """A user-facing problem (bad file, bad option, bad checkpoint); the message names it."""
