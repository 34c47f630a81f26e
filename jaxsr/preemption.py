"""Stop training cleanly on a preemption notice: finish the step, checkpoint it, exit 0.

One process: SIGTERM (what SLURM, Kubernetes and cloud VMs send before eviction) and SIGINT
(Ctrl-C) set a flag that the loop reads after every step.

Several processes: every host must save the *same* step, so the decision is JAX's preemption
sync point (`multihost_utils.reached_preemption_sync_point`). JAX's coordination service owns
SIGTERM there: a notice on any one host is propagated to all, and they agree on the next step
to stop at. SIGINT keeps its default meaning (an immediate KeyboardInterrupt) in that case,
since one host stopping alone would leave the others waiting.
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopSignal:
    """`stop(step) -> bool`, called by every process after every step."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self.multi_process = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        signals = () if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __call__(self, step: int) -> bool:
        if self.multi_process and multihost_utils.reached_preemption_sync_point(step):
            self.received = self.received or "a preemption notice (SIGTERM on some host)"
            return True
        return self.received is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
