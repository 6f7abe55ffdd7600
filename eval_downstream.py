#!/usr/bin/env python
"""Evaluate a downstream task on fused images and baselines: same as ``tdfusion eval``."""
import sys

from tdfusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
