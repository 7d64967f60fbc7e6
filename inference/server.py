"""Run a node: `python -m inference` (configuration from the environment, see docs/inference.md).

SIGTERM drains: /ready turns 503, new requests get 503, in-flight requests finish (up to the
drain timeout), the journal is flushed, then the server stops. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn

from inference.app import Node, create_app
from inference.config import ConfigError, load_config
from inference.telemetry import instrument_app, telemetry_setup

logger = logging.getLogger("inference.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, node: Node, drain_timeout: float) -> None:
        super().__init__(config)
        self.node = node
        self.drain_timeout = drain_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.node.loop
        if self._draining or loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self._draining = True
        logger.info("draining (up to %.0fs)", self.drain_timeout)
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self.node.drain(self.drain_timeout)
        finally:
            self.should_exit = True


def main() -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    telemetry_setup(config)
    app = create_app(config)
    instrument_app(app)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=config.access_log,
        log_level=config.log_level,
        log_config=None,  # the lines go through the node's structured logging (inference/telemetry.py)
        timeout_graceful_shutdown=int(config.drain_timeout_s) or None,
        timeout_keep_alive=30,
    )
    server = DrainingServer(uv_config, app.state.node, config.drain_timeout_s)
    asyncio.run(server.serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
