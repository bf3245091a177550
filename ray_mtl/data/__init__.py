"""The data pipeline: corpora -> clean splits -> joint SentencePiece -> Arrow shards + manifest.

    from ray_mtl.data import prepare, load_prepared, table
    data = prepare(DataConfig(tasks=["eng-fra", "eng-ron"]))   # or: python -m ray_mtl.prepare
    data.shard("eng-ron", "train")                             # src, tgt, src_text, tgt_text
    data = prepare(DataConfig(kind="lm", tasks=["fra", "ron"]))  # languages: ids, text, bytes
    data = load_prepared(data.root)                            # in another process

Modules: ``catalog`` (tasks, corpus root), ``download`` (public sources, checksums), ``corpus``
(reading, validation, normalisation), ``text`` (languages: monolingual corpora and their rows),
``splits`` (dev/test, decontamination), ``tokenizer`` (SentencePiece), ``pipeline`` (cached
stages, shards, manifest), ``prepared`` (reading it back).
"""

from ray_mtl.data.pipeline import prepare
from ray_mtl.data.prepared import Prepared, load_prepared, table
from ray_mtl.data.tokenizer import BOS, EOS, PAD, UNK

__all__ = ["BOS", "EOS", "PAD", "UNK", "Prepared", "load_prepared", "prepare", "table"]
