"""Pieces that several `invjax` subcommands share (see `invjax.cli`).

The ``--no-compile-cache`` flag of the commands that compile programs
(measure, train, experiment, sweep).
"""

from __future__ import annotations

import argparse


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--no-compile-cache", action="store_true",
      help="do not keep compiled programs in JAX's persistent cache "
      "(default: on, in $INVJAX_COMPILE_CACHE or ~/.cache/invjax/jax; "
      "INVJAX_NO_COMPILE_CACHE=1 also turns it off)")
