"""The widget's turns, run off the request path by a bounded pool of worker threads.

A visitor's message is stored and acknowledged at once; its conversation's turn runs here, so a slow
model never holds a request thread (the WhatsApp webhook shares those). At most ``max_turns`` turns are
queued or running at once in this process: past that ``admit`` refuses, and the caller answers 503 with
the estimated wait, rather than letting a crowd of anonymous visitors queue without bound.

A conversation has at most one turn waiting: a message that arrives while one waits is answered by it
(``run_turn`` answers every pending message). Running a conversation's turn twice is harmless (the
second finds nothing pending), which is what lets a visitor's poll restart a turn lost with its process.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
FIRST_GUESS_TURN_S = 5.0  # the wait told before any turn has finished: a small model's reply on 2 cores


class WidgetTurnPool:
    """Runs ``run(conversation_id)`` on ``workers`` threads, with at most ``max_turns`` turns in flight."""

    def __init__(self, run: Callable[[str], object], workers: int, max_turns: int) -> None:
        self._run, self.workers, self.max_turns = run, workers, max_turns
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="widget-turn")
        self._lock = threading.Lock()
        self._slots = 0  # admitted turns, not yet finished (or given back)
        self._waiting: set[str] = set()  # conversations with a turn queued, not yet started
        self._running: dict[str, int] = {}  # conversation -> its turns running now
        self._turn_s = FIRST_GUESS_TURN_S  # moving average of a turn's duration

    def admit(self) -> bool:
        """Take a slot for a turn about to be submitted; False when ``max_turns`` are already in flight."""
        with self._lock:
            if self._slots >= self.max_turns:
                return False
            self._slots += 1
            return True

    def release(self) -> None:
        """Give back an admitted slot that will not be submitted (storing the message failed)."""
        with self._lock:
            self._slots -= 1

    def submit(self, conversation_id: str) -> None:
        """Run the conversation's turn with an admitted slot; joins the turn already waiting, if any."""
        with self._lock:
            if conversation_id in self._waiting:
                self._slots -= 1
                return
            self._waiting.add(conversation_id)
        self._executor.submit(self._work, conversation_id)

    def busy(self, conversation_id: str) -> bool:
        """Whether the conversation has a turn waiting or running in this process."""
        with self._lock:
            return conversation_id in self._waiting or conversation_id in self._running

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the turns in flight, spread over the workers."""
        with self._lock:
            return max(1, min(120, math.ceil(self._turn_s * self._slots / self.workers)))

    def close(self) -> None:
        """Stop taking turns; waits for those running (the waiting ones stay pending, and are resumed by polls)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _work(self, conversation_id: str) -> None:
        with self._lock:
            self._waiting.discard(conversation_id)
            self._running[conversation_id] = self._running.get(conversation_id, 0) + 1
        t0 = time.perf_counter()
        try:
            self._run(conversation_id)
        except Exception:  # the turn engine logs its own failures as error turns; this is anything else
            log.exception("widget turn of conversation %s failed", conversation_id)
        finally:
            with self._lock:
                self._slots -= 1
                self._turn_s = 0.8 * self._turn_s + 0.2 * (time.perf_counter() - t0)
                if self._running[conversation_id] == 1:
                    del self._running[conversation_id]
                else:
                    self._running[conversation_id] -= 1
