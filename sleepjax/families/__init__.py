"""Model families: `FAMILIES[config.model.family]` supplies build, loss, embed, flops and fields.

The train step, train state and evaluation only go through this dict, so a new family plugs in
by adding one entry.
"""

from sleepjax.families import sleep2vec, sleeplm
from sleepjax.families.family import Family

FAMILIES: dict[str, Family] = {"sleep2vec": sleep2vec.FAMILY, "sleeplm": sleeplm.FAMILY}


def get_family(config) -> Family:
  """The family named by `config.model.family`."""
  name = config.model.family
  if name not in FAMILIES:
    raise ValueError(f"model.family={name!r}; choose from {sorted(FAMILIES)}")
  return FAMILIES[name]
