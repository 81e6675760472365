"""The ``harness`` command line: one module per command group, one error handler for all of them."""
from harness.cli.app import main

__all__ = ["main"]
