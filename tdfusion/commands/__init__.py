"""Subcommands of the ``tdfusion`` command line (see :mod:`tdfusion.cli`)."""
