"""Download a Hugging Face dataset into DIR as `<split>.jsonl` files, the layout ajet's
`huggingface_dat_repo` reader reads from a local directory.

    python scripts/download_dataset.py --target=openai/gsm8k --path=/data/gsm8k
    # then, in the experiment YAML:
    #   task_reader: {huggingface_dat_repo: {dataset_path: /data/gsm8k}}

Respects HF_ENDPOINT and HF_TOKEN as `datasets` does. Offline, it fails in one line that says how to
point ajet at local files instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx

# Datasets whose hub repo needs a config name; the tutorial's is GSM8K.
DEFAULT_CONFIG_NAMES = {"openai/gsm8k": "main", "gsm8k": "main"}
DEFAULT_ENDPOINT = "https://huggingface.co"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="hub dataset id, e.g. openai/gsm8k")
    parser.add_argument("--path", required=True, help="directory to write <split>.jsonl files into")
    parser.add_argument("--name", default=None, help="dataset config name (default: 'main' for gsm8k)")
    args = parser.parse_args(argv)

    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    hint = (
        f"download {args.target} on a machine with access and copy its <split>.jsonl files here, then set "
        f"ajet.task_reader.huggingface_dat_repo.dataset_path to that directory "
        f"(or task_reader.type: dataset_file with dataset_file.training.file_path)"
    )
    # Checked first because `datasets` retries an unreachable hub for a long time before it gives up.
    reason = hub_unreachable(endpoint)
    if reason:
        print(
            f"download_dataset: the Hugging Face hub at {endpoint} is unreachable ({reason}); {hint}", file=sys.stderr
        )
        return 1

    import datasets

    name = args.name or DEFAULT_CONFIG_NAMES.get(args.target)
    try:
        splits = datasets.load_dataset(args.target, name)
    except Exception as exc:  # noqa: BLE001 - one readable line, whatever went wrong
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"download_dataset: cannot download {args.target} (config {name!r}): {type(exc).__name__}: {first}; {hint}",
            file=sys.stderr,
        )
        return 1

    out = Path(args.path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        target = out / f"{split}.jsonl"
        rows.to_json(str(target), lines=True, force_ascii=False)
        print(f"{target}: {len(rows)} rows")
    print(f"set ajet.task_reader.huggingface_dat_repo.dataset_path: {out.resolve()}")
    return 0


def hub_unreachable(endpoint: str, timeout: float = 10.0) -> str | None:
    """None when the endpoint answers at all (any HTTP status), else why not."""
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"HF_ENDPOINT {endpoint!r} is not an http(s) URL"
    try:
        httpx.head(endpoint, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
