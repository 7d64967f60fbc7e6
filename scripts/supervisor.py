"""A small process supervisor for `make demo`: start children, restart one that crashes.

A child that exits while the platform runs is started again after a back-off that doubles from
`backoff_s` up to `max_backoff_s` (a child that then stays up for `stable_s` is forgiven its
past crashes). A child that crashes `max_crashes` times within `crash_window_s` is in a crash
loop: the supervisor gives up on the platform with a message naming it, as supervisord's
FATAL state does. Every exit and restart is logged.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mmorch.supervisor")


class CrashLoop(SystemExit):
    """A child keeps crashing; the platform stops."""


@dataclass
class Child:
    name: str
    args: Sequence[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # set while waiting out a back-off
    backoff_s: float = 0.0
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        *,
        cwd: Path,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        max_crashes: int = 5,
        crash_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cwd = cwd
        self.base_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.max_crashes = max_crashes
        self.crash_window_s = crash_window_s
        self.clock = clock
        self.children: list[Child] = []

    def add(self, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        child = Child(name=name, args=list(args), env=env, backoff_s=self.base_backoff_s)
        self.children.append(child)
        return child

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.args, cwd=self.cwd, env=child.env)
        child.started_at = self.clock()
        child.restart_at = None

    def poll(self) -> None:
        """One round: notice exited children, restart those whose back-off is over.

        Raises CrashLoop when a child crashed too often too quickly.
        """
        now = self.clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    log.warning("%s: restarting (restart %d)", child.name, child.restarts)
                    self._start(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                if child.proc is not None and now - child.started_at >= self.stable_s:
                    child.backoff_s = self.base_backoff_s  # up long enough: past crashes are forgiven
                continue
            code = child.proc.returncode
            while child.crashes and now - child.crashes[0] > self.crash_window_s:
                child.crashes.popleft()
            child.crashes.append(now)
            if len(child.crashes) >= self.max_crashes:
                log.error(
                    "%s: exited with %s, crash %d within %.0f s; giving up",
                    child.name,
                    code,
                    len(child.crashes),
                    self.crash_window_s,
                )
                raise CrashLoop(f"{child.name} keeps crashing (exit code {code}); stopping the platform")
            if now - child.started_at >= self.stable_s:
                child.backoff_s = self.base_backoff_s
            delay = child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)
            child.restart_at = now + delay
            log.warning("%s: exited with %s; restarting in %.1f s", child.name, code, delay)

    def stop_all(self, grace_s: float = 15.0) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
