"""Prep at cohort scale: N jobs each convert a deterministic slice of the recordings, one merge.

  sleepjax prep --config.prep.num_shards=N --config.prep.shard_index=i   # i = 0..N-1, in parallel
  sleepjax prep --config.prep.num_shards=N --config.prep.merge=True      # once all have finished

Every job writes into the same output directory (a shared filesystem): each recording goes to its
own staging files (`<data>/.staging/<id>.*`, see `writer`), so jobs never touch the same file.
Job i converts recordings i, i+N, i+2N, ... in metadata order, and resumes like a single `prep`.
The merge converts nothing: it checks every recording is staged (naming the missing ones and their
job otherwise) and then assembles shards, manifest and QC report exactly as a single-machine run
does, so the output is the same, byte for byte.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Slice:
  num_shards: int = 1
  shard_index: int = 0
  merge: bool = False

  @classmethod
  def from_config(cls, config) -> "Slice":
    s = cls(int(config.num_shards), int(config.shard_index), bool(config.merge))
    if s.num_shards < 1 or not 0 <= s.shard_index < s.num_shards:
      raise ValueError(f"prep.shard_index={s.shard_index} must be in [0, prep.num_shards="
                       f"{s.num_shards})")
    return s

  @property
  def partial(self) -> bool:
    """This job converts a slice and stops before the merge."""
    return self.num_shards > 1 and not self.merge

  def select(self, metas: list[dict], todo: list[dict]) -> list[dict]:
    """The recordings this job converts; the merge refuses to start while any is not staged."""
    if self.merge:
      if todo:
        position = {m["recording_id"]: i for i, m in enumerate(metas)}
        missing = [f"{m['recording_id']} (shard {position[m['recording_id']] % self.num_shards})"
                   for m in todo]
        raise ValueError(f"prep merge: {len(todo)} recording(s) not converted yet: "
                         f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                         "run (or re-run) those shards first")
      return []
    if self.num_shards == 1:
      return todo
    mine = {m["recording_id"] for m in metas[self.shard_index::self.num_shards]}
    return [m for m in todo if m["recording_id"] in mine]

  def report(self, converted: int, out) -> str:
    return (f"prep shard {self.shard_index} of {self.num_shards}: {converted} recording(s) "
            f"converted into {out}; once every shard has finished, merge with "
            f"--config.prep.num_shards={self.num_shards} --config.prep.merge=True")
