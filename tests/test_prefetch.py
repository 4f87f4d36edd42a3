import time

import numpy as np
import pytest

from sleepjax.data import pipeline
from sleepjax.data.manifest import read_manifest
from sleepjax.data.prefetch import DevicePrefetch


def _dataset(manifest):
  return pipeline.make_dataset(manifest, "train", ["eeg"], window=4, local_batch=3, seed=1,
                               train=True, fields=("stage",))


@pytest.mark.parametrize("thread", [True, False])
def test_prefetch_keeps_order_and_resumes_where_the_caller_is(prepared, thread):
  manifest = read_manifest(prepared / "data")
  expected = [b["signals/eeg"] for _, b in zip(range(6), iter(_dataset(manifest)))]
  it = DevicePrefetch(iter(_dataset(manifest)), depth=3, thread=thread)
  for want in expected[:2]:
    np.testing.assert_array_equal(next(it)["signals/eeg"], want)
  time.sleep(0.5)  # let it read ahead: the state is still that of the batches handed out
  state = it.get_state()
  assert isinstance(state, bytes)
  np.testing.assert_array_equal(next(it)["signals/eeg"], expected[2])
  resumed = DevicePrefetch(iter(_dataset(manifest)), thread=thread)
  resumed.set_state(state)
  for want in expected[2:]:
    np.testing.assert_array_equal(next(resumed)["signals/eeg"], want)
  it.close()
  resumed.close()


def test_wait_counts_only_time_blocked_on_input():
  def slow():
    for i in range(4):
      time.sleep(0.2)
      yield i

  class Iter:  # minimal Grain-like iterator
    def __init__(self):
      self.gen, self.n = slow(), 0
    def __next__(self):
      self.n += 1
      return next(self.gen)
    def get_state(self):
      return {"n": self.n}
    def set_state(self, state):
      raise NotImplementedError

  it = DevicePrefetch(Iter(), put=lambda x: x * 10)
  assert next(it) == 0 and it.take_wait() > 0.15  # input-bound: blocked ~0.2 s
  time.sleep(0.5)  # a long "step": the next batch is ready when asked for
  assert next(it) == 10 and it.take_wait() < 0.05
  assert [next(it), next(it)] == [20, 30]
  with pytest.raises(StopIteration):
    next(it)
  inline = DevicePrefetch(Iter(), put=lambda x: x * 10, thread=False)  # the caller's thread reads
  assert list(inline) == [0, 10, 20, 30] and inline.wait_s > 0.7
