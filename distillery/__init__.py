"""distillery: synthetic-data orchestration for LLM distillation.

The code lives in three top-level folders of the repository — ``flows/`` (Prefect wiring),
``generators/`` (what to send, to whom, and how) and ``storage/`` (Parquet, DuckDB) — reached as
``distillery.flows``, ``distillery.generators`` and ``distillery.storage``. This package holds what
they share: the job configuration, the error hierarchy and the command line.
"""

__version__ = "0.1.0"
