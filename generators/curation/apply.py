"""Curation of one batch as its answers arrive: dedup keys on every row, then the filters.

Filters are per sample, so they run inline: a dropped answer goes straight to the
``rejected`` table with the filter's name and reason, in the same batch commit as the kept
ones. Duplicate removal needs the whole run and its history, so it runs once the run's
batches are committed (``flows/curate.py``); here each row only gets its ``dedup_bands``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillery.config import CurationConfig
from distillery.generators.curation.minhash import DEFAULT_PARAMS, MinHashParams, band_keys
from distillery.generators.filters import KEEP, Filter, Verdict, build_filters
from distillery.generators.structured import FILTER_NAME, SchemaCheck, StructuredOutput
from distillery.storage.rows import RejectedRow, SampleRow, rejected_row


@dataclass
class Curator:
    """The run's filters and MinHash parameters, and whether the LLM judge grades the rows.

    A recipe's intermediate stages (instructions to be answered later) use a curator without
    the judge and with only the ``empty`` check: the job's filters are about final answers.
    """

    filters: list[Filter[Any]] = field(default_factory=list)
    params: MinHashParams | None = DEFAULT_PARAMS
    #: The job's response_schema check, the last gate after the filters (None: no schema).
    schema: SchemaCheck | None = None
    judge: bool = True

    def curate(self, rows: list[SampleRow]) -> tuple[list[SampleRow], list[RejectedRow]]:
        """Split sample rows into (kept, rejected); rejected rows carry filter and reason."""
        if self.params is not None and rows:
            keys = band_keys([str(row["response_text"] or "") for row in rows], self.params)
            for row, bands in zip(rows, keys.tolist(), strict=True):
                row["dedup_bands"] = bands
        kept: list[SampleRow] = []
        rejected: list[RejectedRow] = []
        schema = self.schema.annotate(rows) if self.schema is not None else [KEEP] * len(rows)
        for row, schema_verdict in zip(rows, schema, strict=True):
            for check in self.filters:
                verdict = check(row)
                if not verdict.keep:
                    rejected.append(_rejected(row, check.name, verdict))
                    break
            else:
                if schema_verdict.keep:
                    kept.append(row)
                else:
                    rejected.append(_rejected(row, FILTER_NAME, schema_verdict))
        return kept, rejected


def _rejected(row: SampleRow, name: str, verdict: Verdict) -> RejectedRow:
    return rejected_row(row, name, verdict.reason or "dropped", verdict.detail)


def build_curator(config: CurationConfig, structured: StructuredOutput | None = None) -> Curator:
    near = config.dedup.enabled and config.dedup.near
    schema = SchemaCheck(structured) if structured is not None else None
    return Curator(build_filters(config.filters), DEFAULT_PARAMS if near else None, schema)
