"""Dynamic batching: requests that arrive together share one model call.

Each request's prepared arrays go into a queue. Whenever one of `workers` model threads is
free, a task takes the first waiting request, then every request queued within
`max_delay_s` (0: only those already waiting) up to `max_batch` examples, runs them as
one batch on that thread (the event loop keeps accepting requests meanwhile) and hands
each request its rows. Under load, requests queue while the threads are busy, so batches
grow by themselves; an idle server answers a lone request without waiting. `max_batch=1`
turns batching off.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable

import numpy as np


class Batcher:

  def __init__(self, run: Callable[..., np.ndarray], *, max_batch: int = 64,
               max_delay_s: float = 0.0, workers: int = 1,
               on_batch: Callable[[int], None] | None = None):
    if max_batch < 1 or max_delay_s < 0 or workers < 1:
      raise ValueError(f'max_batch={max_batch} and workers={workers} must be >= 1, '
                       f'max_delay_s={max_delay_s} >= 0.')
    self._run, self.max_batch, self.max_delay_s = run, max_batch, max_delay_s
    self._on_batch = on_batch or (lambda n: None)
    self._queue: asyncio.Queue | None = None
    self._slots: asyncio.Semaphore | None = None
    self._task: asyncio.Task | None = None
    self._running: set[asyncio.Task] = set()
    self.workers = workers
    self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='model')

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._slots = asyncio.Semaphore(self.workers)
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    """Stops taking batches; batches already running finish first."""
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass
    if self._running:
      await asyncio.gather(*self._running, return_exceptions=True)
    self._executor.shutdown(wait=True)

  async def infer(self, *arrays: np.ndarray) -> np.ndarray:
    """The model's output rows for `arrays` (one request's examples)."""
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((arrays, future))
    return await future

  async def _collect(self) -> list:
    items = [await self._queue.get()]
    rows = len(items[0][0][0])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + self.max_delay_s
    while rows < self.max_batch:
      if not self._queue.empty():
        item = self._queue.get_nowait()
      else:
        remaining = deadline - loop.time()
        if remaining <= 0:
          break
        try:
          item = await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
          break
      items.append(item)
      rows += len(item[0][0])
    return items

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      await self._slots.acquire()  # a free model thread first: meanwhile requests queue up
      items = await self._collect()
      items = [(arrays, f) for arrays, f in items if not f.done()]  # client went away
      if not items:
        self._slots.release()
        continue
      task = loop.create_task(self._run_batch(items))
      self._running.add(task)
      task.add_done_callback(self._running.discard)

  async def _run_batch(self, items: list) -> None:
    try:
      sizes = [len(arrays[0]) for arrays, _ in items]
      joined = [np.concatenate(parts) if len(items) > 1 else parts[0]
                for parts in zip(*(arrays for arrays, _ in items))]
      self._on_batch(sum(sizes))
      try:
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run,
                                                               *joined)
      except Exception as e:  # every request of the batch gets the error; serving goes on
        for _, future in items:
          if not future.done():
            future.set_exception(e)
        return
      start = 0
      for (_, future), n in zip(items, sizes):
        if not future.done():
          future.set_result(out[start:start + n])
        start += n
    finally:
      self._slots.release()
