"""Curation of generated samples: exact and near-duplicate keys, and DuckDB dedup decisions.

:mod:`.normalize` defines the text normal form and the exact key, :mod:`.minhash` the MinHash
band keys stored with every sample, :mod:`.dedup` the decisions for a new run against all
earlier ones.
"""

from distillery.generators.curation.dedup import DedupResult, DedupStats, Duplicate, find_duplicates
from distillery.generators.curation.minhash import (
    DEFAULT_PARAMS,
    MinHashParams,
    band_keys,
    band_keys_from_signatures,
    dedup_keys,
    estimated_jaccard,
    shingle_hashes,
    shingle_jaccard,
    signatures,
)
from distillery.generators.curation.normalize import exact_key, normalize

__all__ = [
    "DEFAULT_PARAMS",
    "DedupResult",
    "DedupStats",
    "Duplicate",
    "MinHashParams",
    "band_keys",
    "band_keys_from_signatures",
    "dedup_keys",
    "estimated_jaccard",
    "exact_key",
    "find_duplicates",
    "normalize",
    "shingle_hashes",
    "shingle_jaccard",
    "signatures",
]
