"""The release export's pieces: what turns a folder of shards into a dataset a team may publish.

Each module does one job of ``distillery export --format hf``: ``terms_gate`` (which rows the
teachers' terms allow for the stated use), ``decontam`` (evaluation sets), ``splits`` (rows to
splits by family), ``layout`` (the Hugging Face folder's shards), ``facts`` (what the card —
and the Prefect run's card artifact — state), ``card`` and ``plots`` (rendering them), and
``hf``, which runs them in order. The chat message shaping they share stays in
``storage/export.py``.
"""
