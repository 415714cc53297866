"""Cross-set dedupe: first by (file, line) wins; content first, then ids among content winners."""

import pyarrow as pa

from orchestrator.data.dedupe import KEY_SCHEMA, find_duplicates, order_of

FILES = ["/d/a.jsonl", "/d/b.jsonl"]


def verdicts(rows):
    table = pa.Table.from_pylist([{"order": order_of(f, ln), "id": i, "content_hash": h} for f, ln, i, h in rows],
                                 schema=KEY_SCHEMA)
    return {(o >> 32, o & 0xFFFFFFFF): r for o, r in find_duplicates(table, FILES).items()}


def test_first_occurrence_wins_whatever_the_row_order():
    rows = [(1, 3, "z", "c1"), (0, 9, "y", "c1"), (0, 2, "x", "c1"), (0, 5, "w", "c2")]
    v = verdicts(rows)
    assert set(v) == {(0, 9), (1, 3)}
    assert v[(1, 3)] == "same content as id 'x' (/d/a.jsonl:2)"


def test_reused_ids_lose_to_their_first_use():
    v = verdicts([(0, 1, "x", "c1"), (0, 2, "x", "c2"), (0, 3, "y", "c3")])
    assert v == {(0, 2): "id 'x' already used at /d/a.jsonl:1"}


def test_content_losers_do_not_claim_ids_and_content_is_checked_first():
    # B copies A's content under id y: a content loser, so C may use id y
    assert set(verdicts([(0, 1, "x", "c1"), (0, 2, "y", "c1"), (0, 3, "y", "c2")])) == {(0, 2)}
    # B reuses id x with new content c2; C repeats c2: B loses on id, C on content (B owned c2 first)
    v = verdicts([(0, 1, "x", "c1"), (0, 2, "x", "c2"), (0, 3, "z", "c2")])
    assert v[(0, 2)].startswith("id 'x'") and v[(0, 3)].startswith("same content as id 'x' (/d/a.jsonl:2)")


def test_records_without_a_key_take_no_part():
    assert verdicts([(0, 1, "", ""), (0, 2, "", ""), (0, 3, "x", "c")]) == {}
