"""SleepLM's input stage: canonical modalities at their own rates -> the released model's channels
at 64 Hz, z-scored per channel-epoch, absent channels zero-filled and flagged.

The channel list is configuration (`model.channels`): entries "modality:index" (or (modality, index)
pairs) naming a channel of a canonical modality. A modality the batch does not carry (position is
not a canonical modality; a pair-first batch carries two) gives a zero, absent channel.

Resampling is band-limited (FFT: 128 Hz -> 64 Hz keeps the bins below 32 Hz, 32 Hz -> 64 Hz
zero-pads the spectrum) over the window of consecutive epochs, so the joins between present epochs
are exact. An FFT is circular, so what lies beyond a present stretch is filled before it runs:
each absent epoch (and half an epoch beyond each end of the window) takes, on the half next to a
present epoch, that epoch's point reflection (`resample_epochs`). A present stretch then continues
smoothly instead of jumping to zeros or wrapping onto the window's far end; the remaining jumps sit
half an epoch (15 s) away from any present sample, where a brick-wall filter's 1/t tail has decayed
to ~1e-4 of the jump. Absent samples are never read. What lies beyond a present stretch is unknown,
so its first and last samples are an estimate: against resampling the whole night, ~1 % of sigma
for content below 20 Hz at 128 Hz (the wrap-around gave up to 40 %), exact joins in between.
"""

import jax
import jax.numpy as jnp

from sleepjax.modalities import EPOCH_SECONDS

# ECG, abdomen, thorax, airflow, EOG L/R, EEG C3/C4, chin EMG, position (the released model's order).
DEFAULT_CHANNELS = ("ecg:0", "resp_effort:1", "resp_effort:0", "airflow:0", "eog:0", "eog:1",
                    "eeg:1", "eeg:0", "emg:0", "position:0")


def parse_channels(entries) -> tuple[tuple[str, int], ...]:
  out = []
  for e in entries:
    if isinstance(e, str):
      name, _, index = e.partition(":")
      out.append((name, int(index or 0)))
    else:
      out.append((str(e[0]), int(e[1])))
  return tuple(out)


def resample(x: jax.Array, n_out: int) -> jax.Array:
  """Band-limited resampling of the last axis to `n_out` samples (float32)."""
  n = x.shape[-1]
  if n == n_out:
    return x.astype(jnp.float32)
  spec = jnp.fft.rfft(x.astype(jnp.float32), axis=-1)
  keep = min(n, n_out) // 2 + 1
  spec = spec[..., :keep]
  if n_out > n:
    if n % 2 == 0:  # the old Nyquist bin is shared by +/- frequencies in the longer spectrum
      spec = spec.at[..., -1].multiply(0.5)
    spec = jnp.pad(spec, [(0, 0)] * (spec.ndim - 1) + [(0, n_out // 2 + 1 - keep)])
  return jnp.fft.irfft(spec, n=n_out, axis=-1) * (n_out / n)


def reflections(x_BxCxWxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Half an epoch of point reflection (2 x(edge) - x(edge + t)) on each side of every epoch ->
  (before [B, C, W, S/2] leading into its first sample, after [B, C, W, S/2] continuing its last).

  A point reflection continues both the value and the slope, so only the curvature breaks at the
  join; a plain mirror breaks the slope, which a brick-wall filter turns into ringing of ~10 % of
  sigma for content near 20 Hz."""
  S = x_BxCxWxS.shape[-1]
  flipped = x_BxCxWxS[..., ::-1]
  before = 2 * x_BxCxWxS[..., :1] - flipped[..., S // 2 - 1:S - 1]
  after = 2 * x_BxCxWxS[..., -1:] - flipped[..., 1:S // 2 + 1]
  return before, after


def resample_epochs(x_BxCxWxS: jax.Array, present_BxCxW: jax.Array, samples: int) -> jax.Array:
  """Resample a window of consecutive epochs to `samples` per epoch -> [B, C, W, samples] float32.

  An absent epoch becomes the continuation of the previous epoch (first half) and the lead-in to
  the next (second half), zeros where those are absent too; the window gets half an epoch of
  reflection on each side; the (W + 1)-epoch stretch is resampled in one FFT and the extra halves
  cropped (an FFT (W + 1) / W times the bare window's, a few elementwise passes)."""
  B, C, W, S = x_BxCxWxS.shape
  x = jnp.where(present_BxCxW[..., None], x_BxCxWxS.astype(jnp.float32), 0.0)
  before, after = reflections(x)
  none = jnp.zeros_like(before[:, :, :1])
  gap = jnp.concatenate([jnp.concatenate([none, after[:, :, :-1]], 2),
                         jnp.concatenate([before[:, :, 1:], none], 2)], -1)
  x = jnp.where(present_BxCxW[..., None], x, gap)
  stretch = jnp.concatenate([before[:, :, 0], x.reshape(B, C, W * S), after[:, :, -1]], -1)
  out = resample(stretch, (W + 1) * samples)[..., samples // 2:samples // 2 + W * samples]
  return out.reshape(B, C, W, samples)


def zscore(x: jax.Array, present: jax.Array, eps: float = 1e-6) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  std = x.std(-1, keepdims=True)
  return jnp.where(present[..., None], (x - mean) / (std + eps), 0.0)


def assemble(signals: dict, masks: dict, channels, rate: int = 64) -> tuple[jax.Array, jax.Array]:
  """signals[m] [B, W, C_m, S_m], masks[m] [B, W, C_m] -> (x [B, W, K, rate*30] float32 z-scored,
  present [B, W, K]) for the K configured channels."""
  samples = rate * EPOCH_SECONDS
  ref = next(iter(signals.values()))
  B, W = ref.shape[:2]
  resampled = {}
  xs, ps = [], []
  for name, index in parse_channels(channels):
    if name not in signals or index >= signals[name].shape[2]:
      xs.append(jnp.zeros((B, W, samples), jnp.float32))
      ps.append(jnp.zeros((B, W), bool))
      continue
    if name not in resampled:
      out = resample_epochs(signals[name].transpose(0, 2, 1, 3), masks[name].transpose(0, 2, 1),
                            samples)
      resampled[name] = out.transpose(0, 2, 1, 3)
    xs.append(resampled[name][:, :, index])
    ps.append(masks[name][:, :, index])
  present = jnp.stack(ps, 2)
  return zscore(jnp.stack(xs, 2), present), present
