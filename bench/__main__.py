"""`python -m bench [NAME ...]`: run the named benchmarks (all by default), one after another.

Each benchmark writes its own RESULTS.md beside it; docs/benchmarks.md gathers them.
"""

import runpy
import sys

BENCHMARKS = ("key_auth", "inference", "gateway_overhead", "ledger", "billing")

names = sys.argv[1:] or list(BENCHMARKS)
unknown = sorted(set(names) - set(BENCHMARKS))
if unknown:
    sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
for name in names:
    print(f"== bench.{name}", flush=True)
    sys.argv = [f"bench.{name}"]
    runpy.run_module(f"bench.{name}", run_name="__main__")
