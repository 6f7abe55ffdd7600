#!/usr/bin/env python
"""Train a fusion network with a task-driven learnable loss: same as ``tdfusion train``."""
import sys

from tdfusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
