"""SleepLM's input stage: canonical modalities at their own rates -> the released model's channels
at 64 Hz, z-scored per channel-epoch, absent channels zero-filled and flagged.

The channel list is configuration (`model.channels`): entries "modality:index" (or (modality, index)
pairs) naming a channel of a canonical modality. A modality the batch does not carry (position is
not a canonical modality; a pair-first batch carries two) gives a zero, absent channel.

Resampling is band-limited (FFT) over the whole window of consecutive epochs, so epoch edges do not
ring: 128 Hz -> 64 Hz keeps the bins below 32 Hz, 32 Hz -> 64 Hz zero-pads the spectrum. Absent
epochs are zeroed before resampling, so their values reach nothing.
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
      sig, mask = signals[name], masks[name]
      C, S = sig.shape[2:]
      sig = jnp.where(mask[..., None], sig.astype(jnp.float32), 0.0)
      # [B, W, C, S] -> [B, C, W*S]: the window is one continuous recording
      flat = sig.transpose(0, 2, 1, 3).reshape(B, C, W * S)
      out = resample(flat, W * samples).reshape(B, C, W, samples).transpose(0, 2, 1, 3)
      resampled[name] = out
    xs.append(resampled[name][:, :, index])
    ps.append(masks[name][:, :, index])
  present = jnp.stack(ps, 2)
  return zscore(jnp.stack(xs, 2), present), present
