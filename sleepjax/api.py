"""A trained model, one night at a time, from Python (a notebook, a script) without a workdir ritual.

    from sleepjax import api
    model = api.load("runs/demo")                 # a workdir, its checkpoints/ or one step's dir
    night = model.embed("night.edf", annotations="night.xml")   # EDF/BDF (+ hypnogram/events)
    night.epoch        # [E, D] fused per-epoch embeddings (30-s epochs)
    night.night        # [D] per-night embedding (mean over epochs with any modality present)
    night.present      # [E, M] which of night.modalities each epoch has
    model.stage("night.edf").stages       # [E] W/N1/N2/N3/REM codes from the staging head of eval
    model.caption("night.edf")            # SleepLM checkpoints: generated text
    model.search("night.edf", "oxygen desaturation").moments   # SleepLM: where, in words
    model.describe("night.edf").text      # SleepLM: the night in sentences, numbers traceable

A night runs through the same reading, channel mapping, QC, filtering, resampling and per-night
normalisation as `sleepjax prep` (`data_prep`), in memory, with the checkpoint's own prep config;
signals are rounded to float16 as the shards store them, and embedded in windows of
`prep.segment_epochs` epochs as evaluation embeds the shards' segments, so the embeddings of a
prepared night's whole segments equal those the training pipeline computes for the same epochs.
A trailing partial segment is embedded too (in the last whole window of the night).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib

import jax
import numpy as np
from flax import nnx

from data_prep import annotations as annotations_lib
from data_prep import channels, edf, harmonise, qc
from sleepjax import families, generate, sharding
from sleepjax.evaluate import describe as describe_lib
from sleepjax.evaluate import search as search_lib
from sleepjax.evaluate import sleeplm as sleeplm_eval
from sleepjax.modalities import CANONICAL, EPOCH_SECONDS, EVENTS, STAGES
from sleepjax.train import restore

STAGING_HEAD = os.path.join("eval", "staging_head.npz")  # under the workdir; see `save_staging_head`
SIGNAL_EXTENSIONS = (".edf", ".bdf", ".rec")


@dataclasses.dataclass
class Night:
  """What `Model.embed` returns for one night of E 30-s epochs and M modalities."""
  epoch: np.ndarray  # [E, D] float32 fused per-epoch embeddings
  night: np.ndarray  # [D] mean of `epoch` over epochs with any modality present
  present: np.ndarray  # [E, M] bool: modality m has a usable channel in epoch e
  channel_mask: dict[str, np.ndarray]  # modality -> [E, C] bool, usable channels per epoch
  modalities: tuple[str, ...]
  per_modality: np.ndarray | None = None  # [E, M, D] per-modality embeddings (sleep2vec)
  signal: np.ndarray | None = None  # [E, P] unit signal embeddings in the text space (SleepLM)
  start: datetime.datetime | None = None  # the recording's start (EDF header), for clock times
  stages: np.ndarray | None = None  # [E] scored stages (-1 unscored), with an annotation file
  events: np.ndarray | None = None  # [E, 30] per-second annotated events (bit k: EVENTS[k])
  qc: list = dataclasses.field(default_factory=list)  # data_prep.qc.ChannelQC per channel
  verdict: str = "ok"  # what prep would decide (`skip` nights are still embedded here)
  reasons: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Staging:
  stages: np.ndarray  # [E] predicted stage codes (STAGES), -1 where no modality is present
  probabilities: np.ndarray  # [E, 5]
  night: Night


def _checkpoint_dir(path: pathlib.Path) -> tuple[pathlib.Path, int | None, pathlib.Path | None]:
  """(checkpoints dir, step or None for the latest, workdir or None) for a workdir, a checkpoints
  directory or one step's directory."""
  if (path / "train" / "checkpoints").is_dir():
    return path / "train" / "checkpoints", None, path
  if path.name.isdigit() and (path / "config").exists():
    workdir = path.parents[2] if path.parent.name == "checkpoints" else None
    return path.parent, int(path.name), workdir
  if any(p.name.isdigit() for p in path.iterdir()):
    workdir = path.parents[1] if path.name == "checkpoints" and path.parent.name == "train" else None
    return path, None, workdir
  raise FileNotFoundError(f"{path}: not a workdir (no train/checkpoints/), a checkpoints "
                          "directory or a checkpoint step")


class Model:
  """A restored checkpoint on the available devices; see the module docstring."""

  def __init__(self, config, graphdef, params, mesh, step: int, workdir: pathlib.Path | None):
    self.config, self.graphdef, self.params, self.mesh = config, graphdef, params, mesh
    self.step, self.workdir = step, workdir
    self.ema = True  # `restore` reads the train state's exponential moving average of the weights
    self.modalities = tuple(config.data.modalities)
    self.family = families.get_family(config)
    self._forward = jax.jit(self._embed_batch)
    self._head = self._tokenizer = self._classifier = None

  # ----------------------------------------------------------------------------- embeddings
  def _embed_batch(self, params, batch):
    out = self.family.embed(nnx.merge(self.graphdef, params), batch)
    keep = {"epoch": out["epoch"].astype(np.float32)}
    for name in ("per_modality", "signal"):
      if name in out:
        keep[name] = out[name].astype(np.float32)
    return keep

  def embed_windows(self, signals: dict, masks: dict) -> dict[str, np.ndarray]:
    """Windows as the pipeline batches them: signals[m] [B, W, C, S], masks[m] [B, W, C] ->
    {"epoch": [B, W, D], "per_modality": [B, M, W, D], "signal": [B, W, P] where the family gives
    them}."""
    b = len(next(iter(masks.values())))
    n = self.mesh.devices.size
    pad = -b % n
    def padded(x):
      return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    batch = {"signals": {m: padded(signals[m]) for m in self.modalities},
             "masks": {m: padded(masks[m]) for m in self.modalities}}
    batch_sh = sharding.batch_sharding(self.mesh)
    with jax.set_mesh(self.mesh):
      batch = jax.tree.map(lambda x: jax.device_put(x, batch_sh), batch)
      out = jax.device_get(self._forward(self.params, batch))
    return {k: np.asarray(v)[:b] for k, v in out.items()}

  def prepare(self, night, annotations: str | os.PathLike | None = None, *,
              channel_map: str | os.PathLike | None = None) -> tuple[dict, dict, dict]:
    """The night harmonised as prep would: (signals[m] [E, C, S] float16, masks[m] [E, C], info)."""
    return prepare_night(night, self.modalities, self.config.prep, annotations=annotations,
                         channel_map=channel_map)

  def embed(self, night, annotations: str | os.PathLike | None = None, *,
            channel_map: str | os.PathLike | None = None) -> Night:
    """Per-epoch and per-night embeddings of one night (see `prepare_night` for `night`)."""
    return self.embed_prepared(*self.prepare(night, annotations, channel_map=channel_map))

  def embed_prepared(self, signals: dict, masks: dict, info: dict | None = None) -> Night:
    """`embed` of a night already harmonised (`prepare`, or a prepared recording's arrays):
    signals[m] [E, C, S], masks[m] [E, C]; `info` fills the rest of `Night`."""
    n_epochs = len(next(iter(masks.values())))
    if n_epochs == 0:
      raise ValueError("the night has no whole 30-s epoch")
    w = min(int(self.config.prep.segment_epochs), n_epochs)
    starts = list(range(0, n_epochs - w + 1, w))
    if starts[-1] + w < n_epochs:  # the tail: the last whole window, its new epochs only
      starts.append(n_epochs - w)
    out = self.embed_windows({m: np.stack([signals[m][s:s + w] for s in starts]) for m in signals},
                             {m: np.stack([masks[m][s:s + w] for s in starts]) for m in masks})
    epoch = np.zeros((n_epochs, out["epoch"].shape[-1]), np.float32)
    per_modality = signal = None
    if "per_modality" in out:
      per_modality = np.zeros((n_epochs, len(self.modalities), out["per_modality"].shape[-1]),
                              np.float32)
    if "signal" in out:
      signal = np.zeros((n_epochs, out["signal"].shape[-1]), np.float32)
    for i, s in enumerate(starts):
      epoch[s:s + w] = out["epoch"][i]
      if per_modality is not None:
        per_modality[s:s + w] = out["per_modality"][i].transpose(1, 0, 2)
      if signal is not None:
        signal[s:s + w] = out["signal"][i]
    present = np.stack([masks[m].any(-1) for m in self.modalities], 1)
    any_present = present.any(1)
    night_vec = (epoch[any_present].mean(0) if any_present.any()
                 else np.zeros(epoch.shape[-1], np.float32))
    return Night(epoch=epoch, night=night_vec, present=present, channel_mask=masks,
                 modalities=self.modalities, per_modality=per_modality, signal=signal,
                 **(info or {}))

  # ----------------------------------------------------------------------------- staging
  def staging_head(self, path: str | os.PathLike | None = None) -> dict:
    """The linear staging head `sleepjax eval` saved (default <workdir>/eval/staging_head.npz)."""
    if path is None and self._head is not None:
      return self._head
    if path is None:
      if self.workdir is None:
        raise FileNotFoundError("no staging head: load() was given no workdir; pass "
                                "stage(..., head=<path to staging_head.npz>)")
      path = self.workdir / STAGING_HEAD
    self._head = load_staging_head(path)
    return self._head

  def stage(self, night, annotations: str | os.PathLike | None = None, *,
            head: str | os.PathLike | None = None,
            channel_map: str | os.PathLike | None = None) -> Staging:
    """Sleep stages per 30-s epoch from the staging head fitted by `sleepjax eval`."""
    h = self.staging_head(head)
    return self._stage_with(h, self.embed(night, annotations, channel_map=channel_map))

  def _stage_with(self, h: dict, emb: Night) -> Staging:
    if h["w"].shape[0] != emb.epoch.shape[1]:
      raise ValueError(f"staging head expects {h['w'].shape[0]}-d embeddings, this model gives "
                       f"{emb.epoch.shape[1]}; the head belongs to another checkpoint")
    logits = ((emb.epoch - h["mu"]) / h["sd"]) @ h["w"] + h["b"]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    stages = np.where(emb.present.any(1), p.argmax(-1), -1)
    return Staging(stages=stages, probabilities=p, night=emb)

  # ----------------------------------------------------------------------------- captions
  def caption(self, night, annotations: str | os.PathLike | None = None, **kwargs):
    """Generated captions of a night (SleepLM checkpoints; `sleepjax.generate`)."""
    if self.family.name != "sleeplm":
      raise ValueError(f"caption() needs a SleepLM checkpoint (model.family='sleeplm'); this "
                       f"checkpoint is model.family={self.family.name!r}")
    signals, masks, _ = self.prepare(night, annotations)
    return generate.caption_night(self, signals, masks, **kwargs)

  # ----------------------------------------------------------------------------- search
  def _sleeplm(self, what: str):
    if self.family.name != "sleeplm":
      raise ValueError(f"{what}() needs a SleepLM checkpoint (model.family='sleeplm'); this "
                       f"checkpoint is model.family={self.family.name!r}")

  def embed_text(self, texts) -> np.ndarray:
    """Unit text embeddings [len(texts), P] in the signal embeddings' space (SleepLM)."""
    self._sleeplm("embed_text")
    if self._tokenizer is None:
      self._tokenizer = generate.tokenizer_of(self.config, self.workdir)
    model = nnx.merge(self.graphdef, jax.device_get(self.params))
    return sleeplm_eval.text_embeddings(model, self._tokenizer, list(texts),
                                        int(self.config.data.caption_len))

  def search(self, night, text: str, annotations: str | os.PathLike | None = None, *, k: int = 5,
             gap: int = 1) -> search_lib.Search:
    """Where in the night `text` is (SleepLM): per-epoch cosine similarity of the signal
    embedding with the text's, and the top `k` moments (epochs at least `gap` + 1 apart) with
    clock times. `night`: what `embed` takes, or a `Night` it returned."""
    self._sleeplm("search")
    emb = night if isinstance(night, Night) else self.embed(night, annotations)
    return search_lib.search(emb.signal, emb.present.any(1), self.embed_text([text])[0], text,
                             k=k, gap=gap, start=emb.start)

  def stage_zero_shot(self, night: Night) -> np.ndarray:
    """[E] stage per epoch without a head (SleepLM): the stage whose prompts' mean text embedding
    is nearest (cosine) to the epoch's signal embedding (the `sleeplm` eval task's zero-shot);
    -1 where nothing is present."""
    self._sleeplm("stage_zero_shot")
    if self._classifier is None:
      if self._tokenizer is None:
        self._tokenizer = generate.tokenizer_of(self.config, self.workdir)
      model = nnx.merge(self.graphdef, jax.device_get(self.params))
      self._classifier = sleeplm_eval.stage_classifier(model, self._tokenizer,
                                                       int(self.config.data.caption_len))
    stages = sleeplm_eval.zero_shot_stage(night.signal, self._classifier)
    return np.where(night.present.any(1), stages, -1)

  def describe(self, night, annotations: str | os.PathLike | None = None, *,
               stager: str = "zero_shot", head: str | os.PathLike | None = None, k: int = 3,
               events: tuple[str, ...] = EVENTS) -> describe_lib.Description:
    """The night in sentences (SleepLM): time with signal, minutes per stage, sleep efficiency and
    onset from the model's stages (`stager`: "zero_shot", or "head": eval's staging head), and for
    each of `events` the top `k` moments of `search` with its prompt (`search.PROMPTS`); the
    scored hypnogram and annotated events beside them when the night has them. Every stated
    number is in `.numbers` with its source. `night`: what `embed` takes, or a `Night`."""
    self._sleeplm("describe")
    emb = night if isinstance(night, Night) else self.embed(night, annotations)
    if stager == "zero_shot":
      stages = self.stage_zero_shot(emb)
    elif stager == "head":
      stages = self._stage_with(self.staging_head(head), emb).stages
    else:
      raise ValueError(f"describe: stager={stager!r} (zero_shot or head)")
    found = {e: self.search(emb, search_lib.PROMPTS[e], k=k) for e in events}
    return describe_lib.describe(stages, emb.present.any(1), found, stager=stager,
                                 scored_E=emb.stages, events_ExS=emb.events, start=emb.start)


# ------------------------------------------------------------------------------- loading
def load(path: str | os.PathLike, *, step: int | None = None) -> Model:
  """Restores a checkpoint with its own saved config onto the available devices (data parallel).

  `path`: a workdir (its train/checkpoints), a checkpoints directory, or one step's directory.
  Without `step` (or a step's directory), the newest checkpoint that restores, with a warning
  naming any newer one skipped; a given step that does not restore is an error naming it.
  The EMA parameters (every train state keeps them), through `sleepjax.train.restore`.
  """
  ckpt_dir, given_step, workdir = _checkpoint_dir(pathlib.Path(path).expanduser().resolve())
  r = restore.restore(ckpt_dir, step=step if step is not None else given_step,
                      choose="sleepjax.api.load(path, step=<step>)")
  return Model(r.config, r.graphdef, r.params, r.mesh, r.step, workdir)


# ------------------------------------------------------------------------------- one night
def _read_night(path: pathlib.Path, annotation_path, modalities, prep, channel_map):
  rec = edf.read_edf(path, decoder="numpy")
  n_epochs = int(rec.duration_s // EPOCH_SECONDS)
  info = {"stages": None, "reasons": [], "start": rec.start}
  qc_config = qc.QCConfig(min_duration_s=prep.min_duration_s)
  lengths = None
  stages = events = None
  issues = []
  if annotation_path is not None:
    stages, events = annotations_lib.read_annotations(annotation_path, n_epochs,
                                                      recording_start=rec.start, issues=issues)
  elif annotations_lib.has_stages(rec.annotations):  # as prep: the EDF+'s own hypnogram
    stages, events = annotations_lib.from_edf_annotations(path, rec.annotations, n_epochs,
                                                          issues=issues)
  if stages is not None:
    scored = np.flatnonzero(stages >= 0)
    lengths = qc.check_lengths(n_epochs, int(scored[-1]) + 1 if len(scored) else n_epochs,
                               qc_config)
    n_epochs = lengths.n_epochs
    stages = stages[:n_epochs]
    info["stages"] = stages
    if events is not None:
      info["events"] = annotations_lib.event_raster(events, n_epochs)
  resolved = channels.resolve_channels(rec, channel_map or prep.channel_map)
  h = harmonise.harmonise(resolved, n_epochs, list(modalities), config=qc_config)
  verdict, reasons = qc.recording_verdict(h.qc, duration_s=rec.duration_s, stages=stages,
                                          lengths=lengths, config=qc_config)
  info.update(verdict=verdict, reasons=list(reasons))
  return h, n_epochs, info


def _array_signals(night: dict, modalities) -> tuple[dict, int]:
  """{"ecg": (x [C, T] or [T], rate)} or {("eeg", "c4_m1"): (x [T], rate)} -> canonical Signals."""
  out = {}
  for key, value in night.items():
    if not (isinstance(value, tuple) and len(value) == 2):
      raise ValueError(f"night[{key!r}]: expected (samples, rate in Hz)")
    x, rate = np.asarray(value[0], np.float64), float(value[1])
    if isinstance(key, tuple):
      m, chans, x = key[0], [key[1]], x.reshape(1, -1)
    else:
      m = key
      if m not in CANONICAL:
        raise ValueError(f"night: unknown modality {m!r} (canonical: {', '.join(CANONICAL)})")
      chans = list(CANONICAL[m].channels)
      x = x.reshape(1, -1) if x.ndim == 1 else x
      if len(x) != len(chans):
        raise ValueError(f"night[{m!r}]: {len(x)} channels, {m} has {len(chans)} "
                         f"({', '.join(chans)})")
    for c, row in zip(chans, x):
      if m in CANONICAL and c not in CANONICAL[m].channels:
        raise ValueError(f"night: {m} has no channel {c!r} ({', '.join(CANONICAL[m].channels)})")
      out[(m, c)] = edf.Signal(f"{m}:{c}", rate, CANONICAL[m].unit, row)
  n = min((int(len(s.data) / s.rate // EPOCH_SECONDS) for s in out.values()), default=0)
  return out, n


def prepare_night(night, modalities, prep, *, annotations=None, channel_map=None):
  """One night through prep's harmonisation/QC, in memory.

  `night`: an EDF/EDF+/BDF path (with an optional `annotations` file: NSRR XML, EDF+ hypnogram,
  CSV), or a dict of arrays in canonical units: {modality: (samples [C, T] in the canonical channel
  order or [T], rate Hz)} or {(modality, channel): (samples [T], rate Hz)}.
  `prep`: the prep section of a config (channel map, QC duration). Returns (signals[m] [E, C, S]
  float16 as the shards store them, masks[m] [E, C] bool, info for `Night`).
  """
  if isinstance(night, dict):
    sigs, n_epochs = _array_signals(night, modalities)
    h = harmonise.harmonise(sigs, n_epochs, list(modalities))
    info = {"stages": None, "verdict": "ok", "reasons": []}
    if annotations is not None:
      stages, events = annotations_lib.read_annotations(annotations, n_epochs)
      info["stages"] = stages[:n_epochs]
      info["events"] = annotations_lib.event_raster(events, n_epochs)
  else:
    path = pathlib.Path(night)
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such file")
    h, n_epochs, info = _read_night(path, annotations, modalities, prep, channel_map)
  signals, masks = {}, {}
  for m in modalities:
    spe = CANONICAL[m].samples_per_epoch
    x = h.signals[m][:, :n_epochs * spe]
    signals[m] = x.reshape(len(x), n_epochs, spe).transpose(1, 0, 2).astype(np.float16)
    masks[m] = h.epoch_mask[m][:n_epochs]
  info["qc"] = h.qc
  return signals, masks, info


# ------------------------------------------------------------------------------- staging heads
def save_staging_head(path: str | os.PathLike, *, w, b, mu, sd, step: int | None = None):
  """The staging head file `Model.stage` reads: a linear probe on standardised embeddings,
  logits = ((x - mu) / sd) @ w + b over STAGES (W, N1, N2, N3, REM). `sleepjax eval` writes it to
  <workdir>/eval/staging_head.npz."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, w=np.asarray(w, np.float32), b=np.asarray(b, np.float32),
           mu=np.asarray(mu, np.float32), sd=np.asarray(sd, np.float32),
           stages=np.asarray(STAGES), step=np.asarray(-1 if step is None else step))


def load_staging_head(path: str | os.PathLike) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no staging head; `sleepjax eval` fits and saves it")
  with np.load(path) as f:
    head = {k: f[k] for k in f.files}
  missing = {"w", "b", "mu", "sd"} - set(head)
  if missing:
    raise ValueError(f"{path}: not a staging head (lacks {', '.join(sorted(missing))})")
  if tuple(head.get("stages", STAGES)) != STAGES or head["w"].shape[1] != len(STAGES):
    raise ValueError(f"{path}: a head over {head['w'].shape[1]} classes, not {', '.join(STAGES)}")
  return head
