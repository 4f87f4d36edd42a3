from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sleepjax.train.metrics import create_writer


def test_writes_readable_event_files(tmp_path):
  writer = create_writer(str(tmp_path))
  writer.write_scalars(3, {"loss": 1.5})
  writer.write_scalars(4, {"loss": 1.25})
  writer.write_hparams({"width": 64})
  writer.flush()
  writer.close()
  events = EventAccumulator(str(tmp_path))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 1.5), (4, 1.25)]
  assert "hparams" in events.Tags()["tensors"]
