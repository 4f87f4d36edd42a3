"""Why stage_event signal->text R@1 stays at chance: which texts the signals retrieve, on the eval's
own pool (BENCHMARKS.md, SleepLM conditioning). `python benchmarks/sleeplm_hubs.py <workdir>`
prints JSON: the distinct top-1 texts and the most retrieved, the same-stage and same-content R@1,
the fraction of top-1 texts with an event against the fraction of epochs with one, the mean
similarity of signals to same-stage texts with and without events, and R@1 after a CSLS hubness
correction."""
import collections
import json
import os
import sys

import numpy as np
from flax import nnx

from data_prep.captions import content
from sleepjax.caption_tokenizer import CaptionTokenizer
from sleepjax.config_tools import load_config
from sleepjax.evaluate import embed, sleeplm

workdir = sys.argv[1]
config, (mesh, manifest, modalities), enc, _, _ = embed.restore(
    load_config("configs/sleeplm.py:smoke"), workdir)
table = embed.embed_split(enc, manifest, "test", list(modalities), config, mesh)
refs, _ = sleeplm.references(manifest, "test")


class Ctx:
  recording_ids = sorted(manifest["recordings"])


rows = sleeplm._rows(Ctx, table, refs)  # pylint: disable=protected-access
model = nnx.merge(enc.graphdef, enc.params)
tokenizer = CaptionTokenizer(os.path.join(manifest["dir"], manifest["tokenizer"]["path"]))
ok = np.flatnonzero(rows["present"])  # the pool of sleeplm.text_retrieval
pick = np.random.default_rng(0).choice(ok, size=min(len(ok), int(config.eval.retrieval_pool)),
                                       replace=False)
texts = [rows["captions"][i]["stage_event"] for i in pick]
sim = rows["signal"][pick] @ sleeplm.text_embeddings(model, tokenizer, texts,
                                                     int(config.data.caption_len)).T
said = np.array([content(rows["features"][i], "stage_event") for i in pick])
stage = rows["stage"][pick]
has_event = np.array([s.count(".") > 1 for s in said])  # the stage sentence and event sentences
top = sim.argmax(1)
same_stage = stage[:, None] == stage[None, :]
out = {"epochs": len(pick), "distinct_top1_texts": len(set(top)),
       "most_retrieved": [(texts[k], n) for k, n in collections.Counter(top).most_common(3)],
       "R@1_same_content": float((said[top] == said).mean()),
       "R@1_same_stage": float((stage[top] == stage).mean()),
       "epochs_with_event": float(has_event.mean()),
       "top1_texts_with_event": float(has_event[top].mean()),
       "same_stage_sim_texts_with_event": float(sim[:, has_event][same_stage[:, has_event]].mean()),
       "same_stage_sim_texts_without": float(sim[:, ~has_event][same_stage[:, ~has_event]].mean())}
for k in (5, 10, 20):  # CSLS (Conneau et al. 2018): each text's mean top-k similarity subtracted
  csls = (2 * sim - np.sort(sim, 0)[-k:].mean(0)[None]).argmax(1)
  out[f"csls{k}_R@1_same_content"] = float((said[csls] == said).mean())
print(json.dumps(out, indent=1))
