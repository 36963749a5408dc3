"""Search your own videos with a trained retrieval checkpoint.

    python -m apps.search index --checkpoint CKPT --videos DIR_OR_LMDB --index INDEX_DIR
    python -m apps.search query --index INDEX_DIR --text "a man is cooking pasta"
    python -m apps.search serve --index INDEX_DIR --port 8000

Parts, in the order data flows through them:
  model.py       the model of a checkpoint (its flags from its `hparams`), text and window encoders
  collection.py  the videos of a folder or LMDB, their version stamps, durations and windows
  store.py       the SQLite store: videos, windows and their embeddings (the source of truth)
  vectors.py     the faiss index over the stored embeddings (exact or IVF), written atomically
  indexing.py    plan, encode (DataLoader workers, one transaction per batch), merge, sync
  query.py       top-k search with --max_per_video, by text or by example video
  serve.py       the FastAPI web page (static/index.html), thumbnails, video playback
"""
