"""Run every inference-plane benchmark in turn; each writes its section of RESULTS.md."""

import asyncio

from bench.inference import batching, noisy_neighbour, structured, weighted_shares

for module in (batching, noisy_neighbour, weighted_shares, structured):
    asyncio.run(module.main())
