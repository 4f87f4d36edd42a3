"""Synthetic polysomnography (PSG) cohort generator writing real file formats.

``write_cohort`` produces, for ``n_subjects`` simulated nights spread round-robin
over ``n_sites`` acquisition sites::

    out_dir/edf/<recording_id>.edf          EDF+ (pyedflib), 1-s data records
    out_dir/annotations/<recording_id>.xml  NSRR/Compumedics-style PSGAnnotation
    out_dir/metadata.csv                    recording_id,subject_id,site,age,sex,bmi,ahi

Site A mimics SHHS (60 Hz mains, 125/50/250/10/1 Hz channels), site B mimics
MESA (50 Hz mains, 256/32/1 Hz channels, 0.8x EEG gain, a seeded fraction of
recordings without nasal pressure, occasional disconnected chin EMG).  Sites
beyond the second reuse the two montages with other mains frequencies/gains.
The signal models live in :mod:`data_prep.physiology` (hypnogram, latent state)
and :mod:`data_prep.render` (waveforms).  Output is fully deterministic: the
same arguments give byte-identical files.

``hard=True`` writes the *hard benchmark* cohort (see :data:`HARD_SITES`): on
top of the standard physiology every site gets its own acquisition chain, so a
staging probe cannot transfer for free between sites and a random encoder's
power features stop separating stages:

* montage: site b records "EEG" as a bipolar mix with the same-side EOG and a
  1 Hz high-pass (slow waves attenuated), site c a 0.5 Hz high-pass;
* gain and noise: per-site gain on every channel, a slow per-electrode gain
  drift through the night (impedance; per-night normalisation cannot undo it)
  and broadband sensor noise at a site-specific SNR on every waveform channel,
  cardio-respiratory ones included (weak modalities get weaker);
* a planted site-label confound: a site-specific narrow-band common-mode
  artefact (9, 13 or 6 Hz) on every electrode channel at once, switched on per
  epoch mostly in site-specific stages (site a: wake/N1, site b: N2, site c:
  REM) -- a shortcut that predicts stages within a site and misleads across
  sites, and that is shared across modalities (easy positives for cross-modal
  contrastive learning);
* demographics: site-specific age ranges (site a older: more wake, less N3,
  higher AHI), so label priors differ by site too.

``wearables=True`` adds a photoplethysmogram ("Pleth", pulses from the night's ECG heartbeats) and a
wrist accelerometer magnitude ("Accel") to every site's montage (:data:`WEARABLE_MONTAGE`; models in
:mod:`data_prep.render`). Off by default: they draw only from their own seeded streams, so the
other channels, and a cohort written without them, stay byte-identical.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import os
import pathlib
from typing import Mapping, NamedTuple

import numpy as np
import pyedflib

from . import physiology as phys
from . import render
from .physiology import EPOCH_S, Event  # noqa: F401  (re-exported)

__all__ = [
    "ChannelSpec",
    "SubjectSpec",
    "SiteSpec",
    "HardSite",
    "HARD_SITES",
    "Night",
    "Event",
    "SITE_A_MONTAGE",
    "SITE_B_MONTAGE",
    "WEARABLE_MONTAGE",
    "make_site",
    "make_subject",
    "simulate_night",
    "write_edf",
    "write_xml",
    "write_cohort",
    "STAGE_CONCEPTS",
]

START = _dt.datetime(2000, 1, 1, 22, 0, 0)


class ChannelSpec(NamedTuple):
  # eeg_c4 eeg_c3 eog_l eog_r emg_chin ecg spo2 resp_thor resp_abdo airflow nasal_pressure position
  # ppg actigraphy
  kind: str
  fs: int  # native sampling rate (Hz)
  unit: str
  phys_range: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class SubjectSpec:
  subject_id: str
  recording_id: str
  site: str
  age: int
  sex: str  # 'M' | 'F'
  bmi: float
  ahi: float  # target apnea-hypopnea index (events / h of sleep)
  missing_channels: tuple[str, ...] | None = None  # None: drawn from the site's missing_prob


@dataclasses.dataclass(frozen=True)
class SiteSpec:
  name: str
  montage: Mapping[str, ChannelSpec] = dataclasses.field(hash=False)
  line_noise_hz: float
  gain: float  # amplifier gain applied to EEG/EOG/EMG
  missing_prob: float = 0.0  # probability each optional channel is absent from a recording
  optional_channels: tuple[str, ...] = ()
  emg_disconnect_prob: float = 0.0
  hard: "HardSite | None" = None  # the hard benchmark's acquisition chain (None: standard)


@dataclasses.dataclass(frozen=True)
class HardSite:
  """A site's acquisition chain in the hard benchmark (amplitudes relative to each channel's sd)."""
  gain: float  # every waveform channel
  noise: float  # broadband sensor noise sd / signal sd
  drift: float  # sd of the slow log-gain drift per electrode
  eeg_highpass_hz: float  # 0 = none
  eeg_mix_eog: float  # EEG = (1 - a) EEG + a EOG (bipolar montage leaking eye movements)
  artefact_hz: float  # common-mode narrow-band artefact on every electrode channel
  artefact_amp: float
  artefact_stages: tuple[int, ...]  # the artefact is on in these stages with p_on, else p_off
  p_on: float = 0.8
  p_off: float = 0.1
  ages: tuple[int, int] = (20, 86)


HARD_SITES = (
    HardSite(1.0, 0.6, 0.25, 0.0, 0.0, 9.0, 0.8, (0, 1), ages=(55, 86)),
    HardSite(0.6, 1.0, 0.4, 1.0, 0.35, 13.0, 0.8, (2,), ages=(20, 50)),
    HardSite(1.4, 0.8, 0.3, 0.5, 0.0, 6.0, 0.8, (4,), ages=(35, 70)),
)


@dataclasses.dataclass(frozen=True, eq=False)
class Night:
  subject: SubjectSpec
  site: SiteSpec
  signals: dict  # label -> float array (physical units) at the channel's native rate
  hypnogram: np.ndarray  # int8 per 30-s epoch: 0=W 1=N1 2=N2 3=N3 4=REM
  events: tuple  # of Event(kind, onset_s, duration_s[, spo2_nadir, spo2_baseline])
  duration_s: int

  @property
  def rates(self) -> dict:
    return {lab: self.site.montage[lab].fs for lab in self.signals}

  @property
  def sleep_hours(self) -> float:
    return float(np.sum(self.hypnogram > 0)) * EPOCH_S / 3600

  @property
  def realised_ahi(self) -> float:
    n = sum(e.kind in ("obstructive_apnea", "hypopnea") for e in self.events)
    return n / self.sleep_hours if self.sleep_hours > 0 else 0.0


_UV = "uV"
SITE_A_MONTAGE = {  # SHHS-like
    "EEG": ChannelSpec("eeg_c4", 125, _UV, (-250.0, 250.0)),
    "EEG(sec)": ChannelSpec("eeg_c3", 125, _UV, (-250.0, 250.0)),
    "EOG(L)": ChannelSpec("eog_l", 50, _UV, (-500.0, 500.0)),
    "EOG(R)": ChannelSpec("eog_r", 50, _UV, (-500.0, 500.0)),
    "EMG": ChannelSpec("emg_chin", 125, _UV, (-100.0, 100.0)),
    "ECG": ChannelSpec("ecg", 250, "mV", (-2.5, 2.5)),
    "SaO2": ChannelSpec("spo2", 1, "%", (0.0, 100.0)),
    "THOR RES": ChannelSpec("resp_thor", 10, "", (-1.0, 1.0)),
    "ABDO RES": ChannelSpec("resp_abdo", 10, "", (-1.0, 1.0)),
    "AIRFLOW": ChannelSpec("airflow", 10, "", (-1.0, 1.0)),
    "NEW AIR": ChannelSpec("nasal_pressure", 10, "", (-1.0, 1.0)),
    "POSITION": ChannelSpec("position", 1, "", (0.0, 3.0)),
}
SITE_B_MONTAGE = {  # MESA-like
    "EEG3": ChannelSpec("eeg_c4", 256, _UV, (-250.0, 250.0)),
    "EEG2": ChannelSpec("eeg_c3", 256, _UV, (-250.0, 250.0)),
    "EOG-L": ChannelSpec("eog_l", 256, _UV, (-500.0, 500.0)),
    "EOG-R": ChannelSpec("eog_r", 256, _UV, (-500.0, 500.0)),
    "EMG": ChannelSpec("emg_chin", 256, _UV, (-100.0, 100.0)),
    "EKG": ChannelSpec("ecg", 256, "mV", (-2.5, 2.5)),
    "SpO2": ChannelSpec("spo2", 1, "%", (0.0, 100.0)),
    "Thor": ChannelSpec("resp_thor", 32, "", (-1.0, 1.0)),
    "Abdo": ChannelSpec("resp_abdo", 32, "", (-1.0, 1.0)),
    "Flow": ChannelSpec("airflow", 32, "", (-1.0, 1.0)),
    "Pres": ChannelSpec("nasal_pressure", 32, "", (-1.0, 1.0)),
    "Pos": ChannelSpec("position", 1, "", (0.0, 3.0)),
}
WEARABLE_MONTAGE = {  # appended to a site's montage by make_site(..., wearables=True)
    "Pleth": ChannelSpec("ppg", 64, "", (-4.0, 4.0)),
    "Accel": ChannelSpec("actigraphy", 32, "g", (0.0, 8.0)),
}
_PREFILTER = {
    "eeg_c4": "HP:0.3Hz LP:35Hz",
    "eeg_c3": "HP:0.3Hz LP:35Hz",
    "eog_l": "HP:0.3Hz LP:35Hz",
    "eog_r": "HP:0.3Hz LP:35Hz",
    "emg_chin": "HP:10Hz",
    "ecg": "HP:0.3Hz",
}
_EXTRA_GAINS = (1.15, 0.9, 1.05, 0.75, 1.25)


def _site_name(j: int) -> str:
  return "site-" + (chr(ord("a") + j) if j < 26 else f"{chr(ord('a') + j % 26)}{j // 26}")


def make_site(j: int, hard: bool = False, wearables: bool = False) -> SiteSpec:
  """Site j (0-based): 0 = SHHS-like, 1 = MESA-like, later ones reuse them with other mains/gain.
  `hard`: with the hard benchmark's acquisition chain HARD_SITES[j % 3]. `wearables`: with the
  channels of WEARABLE_MONTAGE too."""
  if wearables:
    site = make_site(j, hard)
    return dataclasses.replace(site, montage={**site.montage, **WEARABLE_MONTAGE})
  if hard:
    return dataclasses.replace(make_site(j), hard=HARD_SITES[j % len(HARD_SITES)])
  b = j % 2 == 1
  line = (50.0 if b else 60.0) if j < 2 else (60.0 if b else 50.0)
  gain = (0.8 if b else 1.0) if j < 2 else _EXTRA_GAINS[(j - 2) % len(_EXTRA_GAINS)]
  if b:
    return SiteSpec(
        _site_name(j),
        SITE_B_MONTAGE,
        line,
        gain,
        missing_prob=0.25,
        optional_channels=("Pres",),
        emg_disconnect_prob=0.15,
    )
  return SiteSpec(_site_name(j), SITE_A_MONTAGE, line, gain)


def make_subject(
    index: int,
    site: SiteSpec,
    rng: np.random.Generator,
    missing_channels: tuple[str, ...] | None = None,
) -> SubjectSpec:
  """Demographics (age 20-85, sex, BMI 18-40) and a target AHI rising with age, BMI and male sex."""
  age = int(rng.integers(*(site.hard.ages if site.hard else (20, 86))))
  sex = "M" if rng.random() < 0.5 else "F"
  bmi = round(float(np.clip(rng.normal(27 + 0.04 * (age - 50), 4.5), 18, 40)), 1)
  mu = np.log(4.0) + 0.03 * (age - 45) + 0.08 * (bmi - 26) + (0.35 if sex == "M" else 0.0)
  ahi = round(float(np.clip(np.exp(mu + 0.6 * rng.standard_normal()), 0.5, 70)), 1)
  return SubjectSpec(
      f"sub-{index:04d}",
      f"{site.name}-{index:04d}",
      site.name,
      age,
      sex,
      bmi,
      ahi,
      missing_channels,
  )


def simulate_night(
    subject: SubjectSpec, site: SiteSpec, hours: float, rng: np.random.Generator
) -> Night:
  """Simulate one night in memory (signals at native rates, hypnogram, scored events)."""
  n_epochs = int(round(hours * 3600 / EPOCH_S))
  hyp = phys.simulate_hypnogram(n_epochs, subject.age, rng)
  lat = phys.simulate_latent(
      hyp,
      subject.age,
      subject.sex == "M",
      subject.bmi,
      subject.ahi,
      rng,
      emg_disconnect_prob=site.emg_disconnect_prob,
  )
  if subject.missing_channels is None:
    missing = tuple(c for c in site.optional_channels if rng.random() < site.missing_prob)
  else:
    missing = tuple(subject.missing_channels)
  fs_lat = max(s.fs for s in site.montage.values() if s.kind[:3] in ("eeg", "eog", "emg"))
  rnd = render.Renderer(lat, fs_lat)
  line_amp = float(rng.uniform(0.3, 1.5))
  line_phase = float(rng.uniform(0, 2 * np.pi))
  hard_rng = artefact_on = None
  if site.hard is not None:  # its own stream: the standard cohort's draws stay as they were
    hard_rng = np.random.default_rng([int(rng.integers(2**31)), 17])
    p = np.where(np.isin(hyp, site.hard.artefact_stages), site.hard.p_on, site.hard.p_off)
    artefact_on = hard_rng.random(len(hyp)) < p
  signals = {}
  for label, spec in site.montage.items():
    if label in missing:
      continue
    k, fs = spec.kind, spec.fs
    if k in ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg_chin"):
      if k.startswith("eeg"):
        x = rnd.eeg("C4" if k == "eeg_c4" else "C3")
      elif k.startswith("eog"):
        x = rnd.eog("L" if k == "eog_l" else "R")
      else:
        x = rnd.emg()
      x = render.resample_to(x, fs_lat, fs) * site.gain
      amp = line_amp
    elif k == "ecg":
      x, amp = rnd.ecg(fs), 0.01 * line_amp
    elif k == "spo2":
      x, amp = rnd.per_second(lat.spo2, fs), 0.0
    elif k == "position":
      x, amp = rnd.per_second(lat.position, fs), 0.0
    elif k == "ppg":  # pulses from the heartbeats of this night's ECG (256 Hz when it has none)
      fs_ecg = next((s.fs for s in site.montage.values() if s.kind == "ecg"), 256)
      x, amp = rnd.ppg(fs, fs_ecg), 0.0
    elif k == "actigraphy":
      x, amp = rnd.actigraphy(fs), 0.0
    else:
      which = {
          "resp_thor": "thor",
          "resp_abdo": "abdo",
          "airflow": "thermistor",
          "nasal_pressure": "pressure",
      }[k]
      x, amp = rnd.respiration(which, fs), 0.0
    x = x[: lat.n_sec * fs]
    if amp and site.line_noise_hz < 0.5 * fs:
      x = x + amp * np.sin(2 * np.pi * site.line_noise_hz * np.arange(len(x)) / fs + line_phase)
    if site.hard is not None and k not in ("spo2", "position", "ppg", "actigraphy"):
      x = _hard_chain(x, k, fs, site.hard, hyp, hard_rng, artefact_on, rnd, fs_lat)
    if k == "emg_chin" and lat.emg_dead is not None:  # electrode off: flat trace near 0
      i0, i1 = int(lat.emg_dead[0] * fs), int(lat.emg_dead[1] * fs)
      x[i0:i1] = 0.1 * rng.standard_normal(i1 - i0)
    signals[label] = np.clip(x, *spec.phys_range)
  return Night(subject, site, signals, hyp.astype(np.int8), tuple(lat.events), lat.n_sec)


def _hard_chain(x, kind, fs, hard: HardSite, hyp, rng, artefact_on, rnd, fs_lat):
  """The hard benchmark's site chain for one channel: montage, high-pass, common-mode artefact,
  gain with slow drift, broadband noise (see the module docstring)."""
  import scipy.signal as sps  # pylint: disable=g-import-not-at-top

  n = len(x)
  if kind.startswith("eeg") and hard.eeg_mix_eog:
    eog = render.resample_to(rnd.eog("L" if kind == "eeg_c3" else "R"), fs_lat, fs)[:n]
    x = (1 - hard.eeg_mix_eog) * x + hard.eeg_mix_eog * eog[:n]
  if kind.startswith("eeg") and hard.eeg_highpass_hz:
    x = sps.sosfiltfilt(sps.butter(2, hard.eeg_highpass_hz, "highpass", fs=fs, output="sos"), x)
  sd = float(np.std(x)) or 1.0
  electrode = kind in ("eeg_c4", "eeg_c3", "eog_l", "eog_r", "emg_chin", "ecg")
  if electrode and hard.artefact_hz < 0.45 * fs:
    on = np.repeat(artefact_on.astype(float), EPOCH_S * fs)[:n]
    on = np.convolve(on, np.ones(fs) / fs, "same")  # 1-s ramps
    t = np.arange(n) / fs
    x = x + hard.artefact_amp * sd * on * np.sin(2 * np.pi * hard.artefact_hz * t)
  n_sec = -(-n // fs)
  knots = np.arange(0, n_sec + 600, 600)  # a new gain every 10 min, smoothly interpolated
  log_gain = np.interp(np.arange(n) / fs, knots, hard.drift * rng.standard_normal(len(knots)))
  x = hard.gain * np.exp(log_gain) * x
  return x + hard.noise * hard.gain * sd * rng.standard_normal(n)


# --------------------------------------------------------------------------- file writers
def write_edf(night: Night, path: str | os.PathLike) -> pathlib.Path:
  """Write the night as EDF+ (1-s data records, 16-bit, physical ranges from the montage)."""
  path = pathlib.Path(path)
  labels = list(night.signals)
  headers = []
  for lab in labels:
    spec = night.site.montage[lab]
    headers.append(
        dict(
            label=lab,
            dimension=spec.unit,
            sample_frequency=spec.fs,
            physical_min=spec.phys_range[0],
            physical_max=spec.phys_range[1],
            digital_min=-32768,
            digital_max=32767,
            transducer="",
            prefilter=_PREFILTER.get(spec.kind, ""),
        )
    )
  w = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS)
  try:
    w.setSignalHeaders(headers)
    w.setStartdatetime(START)
    w.setPatientCode(night.subject.subject_id)
    w.setSex(1 if night.subject.sex == "M" else 0)
    w.setEquipment(night.site.name)
    w.setRecordingAdditional(night.subject.recording_id)
    # physical -> 16-bit digital ourselves, then one block write per 1-s data record
    n_rec = night.duration_s
    blocks = []
    for lab in labels:
      lo, hi = night.site.montage[lab].phys_range
      x = np.clip(np.asarray(night.signals[lab], float), lo, hi)
      d = np.round((x - lo) / (hi - lo) * 65535.0 - 32768.0).astype(np.int16)
      blocks.append(d.reshape(n_rec, -1))
    records = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    for rec in records:
      if w.blockWriteDigitalShortSamples(rec) != 0:
        raise OSError(f"{path}: writing an EDF data record failed")
  finally:
    w.close()
  return path


STAGE_CONCEPTS = {
    0: "Wake|0",
    1: "Stage 1 sleep|1",
    2: "Stage 2 sleep|2",
    3: "Stage 3 sleep|3",
    4: "REM sleep|5",
}
_EVENT_XML = {
    "obstructive_apnea": ("Respiratory|Respiratory", "Obstructive apnea|Obstructive Apnea"),
    "hypopnea": ("Respiratory|Respiratory", "Hypopnea|Hypopnea"),
    "desaturation": ("Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation"),
    "arousal": ("Arousals|Arousals", "Arousal|Arousal ()"),
    "limb_movement": ("Limb Movement|Limb Movement", "Limb movement - left|Limb Movement (Left)"),
}


def _f(x: float) -> str:
  return f"{float(x):.1f}"


def stage_runs(hypnogram: np.ndarray) -> list[tuple[int, int, int]]:
  """(stage, first_epoch, n_epochs) for each run of equal consecutive stages."""
  h = np.asarray(hypnogram)
  cut = np.flatnonzero(np.diff(h)) + 1
  starts = np.r_[0, cut]
  lens = np.diff(np.r_[starts, len(h)])
  return [(int(h[s]), int(s), int(n)) for s, n in zip(starts, lens)]


def write_xml(night: Night, path: str | os.PathLike) -> pathlib.Path:
  """Write the NSRR/Compumedics-style PSGAnnotation XML (stages merged into runs + events)."""
  path = pathlib.Path(path)
  kinds = {s.kind: lab for lab, s in night.site.montage.items()}
  loc = {
      "obstructive_apnea": kinds.get("resp_abdo"),
      "hypopnea": kinds.get("resp_abdo"),
      "desaturation": kinds.get("spo2"),
      "arousal": kinds.get("eeg_c3"),
      "limb_movement": None,
  }
  clock = START.strftime("00.00.00 %H.%M.%S")
  out = [
      '<?xml version="1.0" encoding="UTF-8"?>',
      "<PSGAnnotation><SoftwareVersion>Compumedics</SoftwareVersion><EpochLength>30</EpochLength>"
      "<ScoredEvents>",
      f"<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start>"
      f"<Duration>{_f(night.duration_s)}</Duration><ClockTime>{clock}</ClockTime></ScoredEvent>",
  ]
  for stage, first, n in stage_runs(night.hypnogram):
    out.append(
        f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>{STAGE_CONCEPTS[stage]}"
        f"</EventConcept><Start>{_f(first * EPOCH_S)}</Start><Duration>{_f(n * EPOCH_S)}</Duration>"
        "</ScoredEvent>"
    )
  for e in night.events:
    etype, concept = _EVENT_XML[e.kind]
    s = (
        f"<ScoredEvent><EventType>{etype}</EventType><EventConcept>{concept}</EventConcept>"
        f"<Start>{_f(e.onset_s)}</Start><Duration>{_f(e.duration_s)}</Duration>"
    )
    if loc[e.kind]:
      s += f"<SignalLocation>{loc[e.kind]}</SignalLocation>"
    if e.kind == "desaturation":
      s += (
          f"<SpO2Nadir>{e.spo2_nadir:g}</SpO2Nadir><SpO2Baseline>{e.spo2_baseline:g}</SpO2Baseline>"
      )
    out.append(s + "</ScoredEvent>")
  out.append("</ScoredEvents></PSGAnnotation>")
  path.write_text("\n".join(out) + "\n", encoding="utf-8")
  return path


METADATA_COLUMNS = ("recording_id", "subject_id", "site", "age", "sex", "bmi", "ahi")


def _cohort_plan(n_subjects: int, n_sites: int, seed: int, hard: bool = False,
                 wearables: bool = False):
  sites = [make_site(j, hard, wearables) for j in range(n_sites)]
  members = {
      j: [i for i in range(1, n_subjects + 1) if (i - 1) % n_sites == j] for j in range(n_sites)
  }
  missing = {}
  for j, site in enumerate(sites):
    ids = members[j]
    k = int(np.floor(site.missing_prob * len(ids) + 0.5)) if site.optional_channels else 0
    drop = set(np.random.default_rng([seed, 1_000_003, j]).permutation(ids)[:k].tolist())
    for i in ids:
      missing[i] = site.optional_channels if i in drop else ()
  subjects = []
  for i in range(1, n_subjects + 1):
    site = sites[(i - 1) % n_sites]
    subjects.append(make_subject(i, site, np.random.default_rng([seed, i, 0]), missing[i]))
  return sites, subjects


def _simulate_and_write(args):
  subject, site, hours, seed, index, edf_dir, xml_dir = args
  night = simulate_night(subject, site, hours, np.random.default_rng([seed, index, 1]))
  write_edf(night, pathlib.Path(edf_dir) / f"{subject.recording_id}.edf")
  write_xml(night, pathlib.Path(xml_dir) / f"{subject.recording_id}.xml")
  return night.realised_ahi


def write_cohort(
    out_dir: str | os.PathLike,
    n_subjects: int = 8,
    n_sites: int = 2,
    hours: float = 1.5,
    seed: int = 0,
    workers: int = 1,
    hard: bool = False,
    wearables: bool = False,
) -> pathlib.Path:
  """Write out_dir/edf/<rid>.edf, out_dir/annotations/<rid>.xml and out_dir/metadata.csv.

  Returns the metadata.csv path.  ``workers > 1`` simulates subjects in that
  many worker processes, forked from a fork server (the caller then needs an
  ``if __name__ == "__main__"`` guard); it changes speed only, never the output. ``hard``: the
  hard benchmark cohort, ``wearables``: PPG and actigraphy channels too (module docstring).
  """
  out = pathlib.Path(out_dir)
  edf_dir, xml_dir = out / "edf", out / "annotations"
  edf_dir.mkdir(parents=True, exist_ok=True)
  xml_dir.mkdir(parents=True, exist_ok=True)
  sites, subjects = _cohort_plan(n_subjects, n_sites, seed, hard, wearables)
  jobs = [
      (s, sites[(i - 1) % n_sites], hours, seed, i, str(edf_dir), str(xml_dir))
      for i, s in enumerate(subjects, start=1)
  ]
  if workers > 1 and len(jobs) > 1:
    import concurrent.futures as cf
    import multiprocessing as mp

    context = mp.get_context("forkserver")  # as data_prep/prep.py's workers, and why
    context.set_forkserver_preload([__name__])
    with cf.ProcessPoolExecutor(workers, mp_context=context) as ex:
      ahis = list(ex.map(_simulate_and_write, jobs))
  else:
    ahis = [_simulate_and_write(j) for j in jobs]
  meta = out / "metadata.csv"
  with open(meta, "w", newline="", encoding="utf-8") as fh:
    wr = csv.writer(fh, lineterminator="\n")
    wr.writerow(METADATA_COLUMNS)
    for s, ahi in zip(subjects, ahis):
      wr.writerow(
          [s.recording_id, s.subject_id, s.site, s.age, s.sex, f"{s.bmi:.1f}", f"{ahi:.2f}"]
      )
  return meta
