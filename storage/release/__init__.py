"""The release export's pieces: what turns a folder of shards into a dataset a team may publish.

Each module does one job of ``distillery export --format hf``: the terms gate (which rows the
teachers' terms allow for the stated use), decontamination against evaluation sets, splits,
and the Hugging Face layout with its dataset card. The chat message shaping they share stays in
``storage/export.py``.
"""
