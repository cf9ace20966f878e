"""Exact and near-duplicate decisions for one run's rows against themselves and all history.

Everything that grows with the size of the output stays in DuckDB: history is only *probed*
(a streamed semi-join on content hashes and on band keys), never loaded whole into Python, so
deduplicating run 50 costs about what deduplicating run 1 did. Python sees only the candidate
pairs (rows sharing a band key), verifies them by exact shingle Jaccard, and resolves clusters.

Input: ``source`` is a table or view name, or a parenthesised query, visible to ``con``, with

============== ========== ===============================================================
column          type       meaning
============== ========== ===============================================================
sample_id       VARCHAR    unique row id; ``duplicate_of`` points at one of these
rank            BIGINT     age: lower is older and wins (e.g. ``epoch_us(created_at)``)
is_new          BOOLEAN    true for the run being deduplicated, false for history
content_hash    VARCHAR    exact key (:func:`.normalize.exact_key`); NULL = never exact dup
bands           UBIGINT[]  :func:`.minhash.band_keys` of the text; NULL = no near check
response_text   VARCHAR    the text, read back only for candidate rows
============== ========== ===============================================================

History should hold the rows earlier runs *kept* (a twin must be something that is in the
dataset). Bands are one list column rather than one column per band so that a change in
the number of bands is not a schema change; ``unnest`` turns them into rows for the join.

Decisions, for new rows only (history rows are never rejected):

* ``duplicate``: its ``content_hash`` equals an older row's (history first, then earlier new
  rows by rank).
* ``near_duplicate``: it is connected to an older row by a chain of pairs that share a band
  key and have exact shingle Jaccard ≥ ``threshold`` (connected components, as in datatrove
  and text-dedup). Each component keeps its oldest member; history is older than every new
  row, so a component that reaches history keeps a history row and rejects all its new rows.
* ``duplicate_of`` is always a row that is kept: a history row or a kept new row. A row whose
  only twin was itself rejected points at that twin's kept representative.

Exact Jaccard rather than the MinHash estimate: the bench (``bench/dedup_quality.py``) shows
the estimate from 50 permutations lets pairs of true Jaccard 0.7 through and misses some at
0.8; recomputing shingles for candidate rows only costs a few seconds per million rows.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

import duckdb
import pyarrow as pa

from distillery.generators.curation.minhash import DEFAULT_PARAMS, MinHashParams, shingle_hashes

log = logging.getLogger(__name__)

Reason = Literal["duplicate", "near_duplicate"]
# Candidate pairs verified per round; bounds the Python memory of shingle sets (~10 KB each).
_VERIFY_CHUNK = 20_000


@dataclass(frozen=True)
class Duplicate:
    """One rejected new row: why, and which kept row stands in for it."""

    sample_id: str
    reason: Reason
    duplicate_of: str


@dataclass(frozen=True)
class DedupStats:
    """Counts for the run summary; ``capped_keys`` > 0 means ``max_partners`` was reached."""

    new_rows: int
    duplicates: int
    near_duplicates: int
    candidate_pairs: int
    verified_pairs: int
    capped_keys: int


@dataclass(frozen=True)
class DedupResult:
    duplicates: list[Duplicate]
    stats: DedupStats

    def to_arrow(self) -> pa.Table:
        """The decisions as a table (sample_id, reason, duplicate_of) to join onto rows."""
        return pa.table(
            {
                "sample_id": pa.array([d.sample_id for d in self.duplicates], pa.string()),
                "reason": pa.array([d.reason for d in self.duplicates], pa.string()),
                "duplicate_of": pa.array([d.duplicate_of for d in self.duplicates], pa.string()),
            }
        )


class _Components:
    """Union-find whose root is always the smallest node id, i.e. the oldest row."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        while node != root:
            node, parent[node] = parent[node], root
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@contextmanager
def _scratch(con: duckdb.DuckDBPyConnection) -> Iterator[str]:
    """A unique prefix for temp tables, dropped afterwards even if a query fails."""
    prefix = f"_dedup_{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        for name in ("new", "hist_exact", "exact", "new_keys", "hist_nodes", "members", "texts"):
            con.execute(f"DROP TABLE IF EXISTS {prefix}_{name}")
        with suppress(KeyError, duckdb.Error):
            con.unregister(f"{prefix}_wanted")


def find_duplicates(
    con: duckdb.DuckDBPyConnection,
    source: str,
    *,
    params: MinHashParams = DEFAULT_PARAMS,
    threshold: float = 0.8,
    max_partners: int = 16,
) -> DedupResult:
    """Decide which new rows of ``source`` are duplicates (see the module docstring).

    ``params`` must be the ones the ``bands`` column was written with (its shingle size and
    case folding define the Jaccard that is verified). ``max_partners`` bounds the work per
    band key: a new row is compared with at most that many older rows sharing one key (keys
    shared by hundreds of rows come from boilerplate, and a true twin shares several bands).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if max_partners < 1:
        raise ValueError("max_partners must be at least 1")
    with _scratch(con) as t:
        new_rows = _load_new(con, source, t)
        exact = _exact(con, source, t)
        pairs, capped = _candidate_pairs(con, source, t, max_partners)
        components = _Components()
        verified = _verify(con, source, t, pairs, params, threshold, components)
        return _decide(con, t, exact, components, new_rows, len(pairs), verified, capped)


def _load_new(con: duckdb.DuckDBPyConnection, source: str, t: str) -> int:
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_new AS
        SELECT row_number() OVER (ORDER BY rank, sample_id) AS node,
               sample_id, content_hash, bands
        FROM {source} WHERE is_new
        """
    )
    return int(con.execute(f"SELECT count(*) FROM {t}_new").fetchall()[0][0])


def _exact(con: duckdb.DuckDBPyConnection, source: str, t: str) -> list[tuple[int, str, int]]:
    """(node, twin sample_id, twin node or 0 for a history twin) of every exact duplicate."""
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_hist_exact AS
        SELECT content_hash, arg_min(sample_id, (rank, sample_id)) AS twin
        FROM {source}
        WHERE NOT is_new AND content_hash IN (SELECT content_hash FROM {t}_new)
        GROUP BY content_hash
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_exact AS
        WITH first_new AS (
            SELECT content_hash, min(node) AS first_node, arg_min(sample_id, node) AS first_id
            FROM {t}_new WHERE content_hash IS NOT NULL GROUP BY content_hash
        )
        SELECT n.node,
               coalesce(h.twin, f.first_id) AS twin,
               CASE WHEN h.twin IS NULL THEN f.first_node ELSE 0 END AS twin_node
        FROM {t}_new n
        JOIN first_new f USING (content_hash)
        LEFT JOIN {t}_hist_exact h USING (content_hash)
        WHERE h.twin IS NOT NULL OR n.node > f.first_node
        """
    )
    rows = con.execute(f"SELECT node, twin, twin_node FROM {t}_exact").fetchall()
    return [(int(node), str(twin), int(twin_node)) for node, twin, twin_node in rows]


def _candidate_pairs(
    con: duckdb.DuckDBPyConnection, source: str, t: str, max_partners: int
) -> tuple[list[tuple[int, int]], int]:
    """(older node, newer node) pairs sharing a band key, newer always a new row.

    Node ids order all rows by age: history rows get -H..-1 (by rank), new rows 1..N.
    """
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_new_keys AS
        SELECT n.node, unnest(n.bands) AS key
        FROM {t}_new n ANTI JOIN {t}_exact e USING (node)
        WHERE n.bands IS NOT NULL
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_hist_nodes AS
        WITH matched AS (
            SELECT sample_id, rank, key
            FROM (SELECT sample_id, rank, unnest(bands) AS key
                  FROM {source} WHERE NOT is_new AND bands IS NOT NULL)
            WHERE key IN (SELECT key FROM {t}_new_keys)
            QUALIFY row_number() OVER (PARTITION BY key ORDER BY rank, sample_id)
                    <= {int(max_partners)}
        ), numbered AS (
            SELECT sample_id,
                   dense_rank() OVER (ORDER BY rank, sample_id)
                   - (SELECT count(DISTINCT sample_id) FROM matched) - 1 AS node
            FROM (SELECT DISTINCT sample_id, rank FROM matched)
        )
        SELECT m.key, n.node, n.sample_id FROM matched m JOIN numbered n USING (sample_id)
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_members AS
        WITH all_members AS (
            SELECT key, node FROM {t}_new_keys
            UNION ALL SELECT key, node FROM {t}_hist_nodes
        ), shared AS (
            SELECT key FROM all_members GROUP BY key HAVING count(*) > 1
        )
        SELECT key, node, row_number() OVER (PARTITION BY key ORDER BY node) AS pos
        FROM all_members WHERE key IN (SELECT key FROM shared)
        """
    )
    capped = int(
        con.execute(
            f"SELECT count(DISTINCT key) FROM {t}_members WHERE pos > {int(max_partners) + 1}"
        ).fetchall()[0][0]
    )
    if capped:
        log.warning(
            "%d band keys are shared by more than %d rows; compared only the oldest %d",
            capped,
            max_partners + 1,
            max_partners,
        )
    result = con.execute(
        f"""
        SELECT DISTINCT a.node AS older, b.node AS newer
        FROM {t}_members a JOIN {t}_members b ON a.key = b.key AND a.pos < b.pos
        WHERE b.node > 0 AND a.pos <= {int(max_partners)}
        """
    ).fetchnumpy()
    for name in ("new_keys", "members"):  # free their memory before the texts come in
        con.execute(f"DROP TABLE {t}_{name}")
    older, newer = result["older"], result["newer"]
    return list(zip(older.tolist(), newer.tolist(), strict=True)), capped


def _verify(
    con: duckdb.DuckDBPyConnection,
    source: str,
    t: str,
    pairs: list[tuple[int, int]],
    params: MinHashParams,
    threshold: float,
    components: _Components,
) -> int:
    """Union every candidate pair whose exact shingle Jaccard reaches ``threshold``.

    The candidates' texts are copied once into a DuckDB temp table (one scan of ``source``),
    then pairs are verified in chunks: a Python set of ~150 shingle hashes costs ~10 KB, so
    holding every candidate's set at once would cost gigabytes at a million rows.
    """
    if not pairs:
        return 0
    pairs.sort()
    _register_nodes(con, t, sorted({n for pair in pairs for n in pair}))
    con.execute(
        f"""
        CREATE TEMP TABLE {t}_texts AS
        WITH wanted AS ({_WANTED_IDS.format(t=t)})
        SELECT w.node, s.response_text FROM wanted w JOIN {source} s USING (sample_id)
        """
    )
    verified = 0
    for first in range(0, len(pairs), _VERIFY_CHUNK):
        chunk = pairs[first : first + _VERIFY_CHUNK]
        _register_nodes(con, t, sorted({n for pair in chunk for n in pair}))
        rows = con.execute(
            f"SELECT x.node, x.response_text FROM {t}_texts x JOIN {t}_wanted w USING (node)"
        ).fetchall()
        verified += _verify_chunk(chunk, rows, params, threshold, components)
    return verified


def _verify_chunk(
    chunk: list[tuple[int, int]],
    rows: list[tuple[int, str | None]],
    params: MinHashParams,
    threshold: float,
    components: _Components,
) -> int:
    index = {int(node): i for i, (node, _) in enumerate(rows)}
    hashes, offsets = shingle_hashes([text or "" for _, text in rows], params)
    sets: dict[int, frozenset[int]] = {}

    def shingles(node: int) -> frozenset[int]:
        cached = sets.get(node)
        if cached is None:
            i = index[node]
            cached = sets[node] = frozenset(hashes[offsets[i] : offsets[i + 1]].tolist())
        return cached

    verified = 0
    for older, newer in chunk:
        a, b = shingles(older), shingles(newer)
        inter = len(a & b)
        if inter / (len(a) + len(b) - inter) >= threshold:  # as in shingle_jaccard
            components.union(older, newer)
            verified += 1
    return verified


def _decide(
    con: duckdb.DuckDBPyConnection,
    t: str,
    exact: list[tuple[int, str, int]],
    components: _Components,
    new_rows: int,
    candidate_pairs: int,
    verified: int,
    capped: int,
) -> DedupResult:
    near = [
        (node, components.find(node))
        for node in list(components.parent)
        if node > 0 and components.find(node) != node
    ]
    exact_rep = [
        (node, twin, components.find(twin_node) if twin_node else 0)
        for node, twin, twin_node in exact
    ]
    wanted = {node for node, _ in near} | {rep for _, rep in near}
    wanted |= {node for node, _, _ in exact_rep} | {rep for _, _, rep in exact_rep if rep}
    ids = _sample_ids(con, t, wanted)
    decisions = [Duplicate(ids[node], "near_duplicate", ids[rep]) for node, rep in near]
    for node, twin, rep in exact_rep:
        decisions.append(Duplicate(ids[node], "duplicate", ids[rep] if rep else twin))
    decisions.sort(key=lambda d: d.sample_id)
    stats = DedupStats(
        new_rows=new_rows,
        duplicates=len(exact),
        near_duplicates=len(near),
        candidate_pairs=candidate_pairs,
        verified_pairs=verified,
        capped_keys=capped,
    )
    return DedupResult(decisions, stats)


# The sample ids of the nodes registered as {t}_wanted.
_WANTED_IDS = """
    SELECT n.node, n.sample_id FROM {t}_new n JOIN {t}_wanted w USING (node)
    UNION ALL
    SELECT DISTINCT h.node, h.sample_id FROM {t}_hist_nodes h JOIN {t}_wanted w USING (node)
"""


def _register_nodes(con: duckdb.DuckDBPyConnection, t: str, nodes: list[int]) -> None:
    with suppress(KeyError, duckdb.Error):
        con.unregister(f"{t}_wanted")
    con.register(f"{t}_wanted", pa.table({"node": pa.array(nodes, pa.int64())}))


def _sample_ids(con: duckdb.DuckDBPyConnection, t: str, nodes: set[int]) -> dict[int, str]:
    if not nodes:
        return {}
    _register_nodes(con, t, sorted(nodes))
    rows = con.execute(_WANTED_IDS.format(t=t)).fetchall()
    return {int(node): str(sample_id) for node, sample_id in rows}
