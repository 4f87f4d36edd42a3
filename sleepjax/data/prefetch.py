"""Host -> device prefetch: the next batches are read and transferred while the step runs.

    it = prefetch.DevicePrefetch(iter(ds), lambda b: pipeline.to_global(b, batch_sharding))
    for step in ...:
      batch = next(it)           # on device already, unless input is the bottleneck
      ...
      metrics["data_wait_s"] = it.take_wait()   # seconds the caller was blocked in next()

A background thread pulls host batches, starts their transfer (`put`) and queues up to `depth`
of them. With `thread=False` the caller's thread does it, `depth` batches ahead (the transfer of
batch k+1 still overlaps step k); use that over Grain worker processes (`data.workers` > 0),
whose iterator is ~3x slower when pulled from another thread than from the one that made it. `wait_s` counts only the time the caller was actually blocked waiting for a batch: a
step bound by input shows it, a step that hides input behind compute shows ~0. `get_state` /
`set_state` give the position of the batches handed out (not of those read ahead), as JSON bytes,
so `grain.checkpoint.CheckpointSave/Restore(it)` checkpoint it and a resumed run continues exactly.
"""

import collections
import json
import queue
import threading
import time
from typing import Any, Callable, Iterator

_DONE = object()


class DevicePrefetch:
  """Wraps a (Grain) iterator of host batches; yields `put(batch)` `depth` batches ahead."""

  def __init__(self, iterator: Iterator, put: Callable[[Any], Any] = lambda x: x, depth: int = 2,
               thread: bool = True):
    self._it, self._put, self._depth, self._use_thread = iterator, put, max(1, depth), thread
    self._ahead = collections.deque()  # thread=False: (put batch, state) read ahead
    self._state = iterator.get_state()
    self._queue, self._thread, self._stop = None, None, threading.Event()
    self.wait_s = 0.0  # total seconds blocked in __next__
    self.batches = 0

  def _fill(self, q: queue.Queue, stop: threading.Event):
    try:
      while not stop.is_set():
        batch = next(self._it)
        item = (self._put(batch), self._it.get_state())
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except StopIteration:
      q.put((_DONE, None))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller)
      q.put((_DONE, e))

  def _start(self):
    self._stop = threading.Event()
    self._queue = queue.Queue(self._depth)
    self._thread = threading.Thread(target=self._fill, args=(self._queue, self._stop), daemon=True,
                                    name="device-prefetch")
    self._thread.start()

  def __iter__(self):
    return self

  def _next_inline(self):
    try:
      while len(self._ahead) < self._depth + 1:
        self._ahead.append((self._put(next(self._it)), self._it.get_state()))
    except StopIteration:
      if not self._ahead:
        return _DONE, None
    return self._ahead.popleft()

  def __next__(self):
    if not self._use_thread:
      t0 = time.perf_counter()
      item, state = self._next_inline()
      self.wait_s += time.perf_counter() - t0
      if item is _DONE:
        raise StopIteration
      self._state = state
      self.batches += 1
      return item
    if self._thread is None:
      self._start()
    t0 = time.perf_counter()
    item, state = self._queue.get()
    self.wait_s += time.perf_counter() - t0
    if item is _DONE:
      self._queue.put((_DONE, state))  # later calls see the same end
      if state is not None:
        raise state
      raise StopIteration
    self._state = state
    self.batches += 1
    return item

  def take_wait(self) -> float:
    """Seconds blocked in `next` since the last call (for a per-logging-interval data wait)."""
    wait, self.wait_s = self.wait_s, 0.0
    return wait

  def start_prefetch(self):
    if self._thread is None and self._use_thread:
      self._start()

  def close(self):
    """Stops reading ahead and rewinds the wrapped iterator to the batches handed out."""
    if self._thread is not None:
      self._stop.set()
      while self._thread.is_alive():  # unblock a producer waiting on a full queue
        try:
          self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.05)
      self._thread = None
      if self._state is not None:
        self._it.set_state(self._state)
    elif self._ahead:
      self._ahead.clear()
      self._it.set_state(self._state)

  def get_state(self) -> bytes:
    return json.dumps(self._state).encode()

  def set_state(self, state: bytes | dict):
    """Repositions the wrapped iterator (Grain state, or the bytes `get_state` gave)."""
    self.close()
    self._state = json.loads(state) if isinstance(state, (bytes, str)) else state
    self._it.set_state(self._state)
