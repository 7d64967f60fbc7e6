"""Run every inference-plane benchmark in turn; each writes its section of RESULTS.md (embeddings
only with its own `--write`: `python -m bench.inference.embeddings --write`).

`--json PATH` also writes their figures as JSON; `--quick` runs shorter versions (fewer levels, a
shorter measuring window) and leaves RESULTS.md alone: for bench/report.py's quick mode.
"""

import argparse
import asyncio
import json
from pathlib import Path

from bench.inference import batching, embeddings, noisy_neighbour, structured, weighted_shares

parser = argparse.ArgumentParser(prog="python -m bench.inference")
parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON (bench/report.py reads it)")
parser.add_argument("--quick", action="store_true", help="shorter runs; RESULTS.md is not written")
parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
args = parser.parse_args()
if args.quick:
    batching.LEVELS = (1, 16)
    batching.DEFAULT_MODELS = ("demo",)
    noisy_neighbour.B_REQUESTS = 12
    weighted_shares.MEASURE_S = 6.0
    embeddings.ROUNDS, embeddings.REPEAT = 2, 1
if args.quick or args.no_write:
    for module in (batching, noisy_neighbour, weighted_shares, structured):
        module.write_section = lambda name, body: None  # type: ignore[attr-defined]
figures = {
    "batching": asyncio.run(batching.main([])),
    "noisy_neighbour": asyncio.run(noisy_neighbour.main()),
    "weighted_shares": asyncio.run(weighted_shares.main()),
    "structured": asyncio.run(structured.main(["--rounds", "2", "--max-tokens", "64"] if args.quick else [])),
    "embeddings": asyncio.run(embeddings.main()),
}
if args.json:
    Path(args.json).write_text(json.dumps(figures, indent=1))
