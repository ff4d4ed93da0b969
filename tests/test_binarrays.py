"""Prebuilt binary array parameters (eventstore/postgres/binarrays.py) reach PostgreSQL as the same values
psycopg's own list dumping sends, NULLs and non-ASCII text included; the server refuses what it refused."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.postgres import binarrays as arrays

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as c:
        arrays.register(c)
        yield c


@pytest.mark.parametrize(("build", "sql_type", "values"), [
    (arrays.text_array, "text[]", ["a", "ünï ✓", "", "x" * 300]),
    (arrays.text_array, "text[]", ["a", None, "b"]),
    (arrays.text_array, "text[]", []),
    (arrays.int8_array, "bigint[]", [1, -2, 2**63 - 1, -(2**63)]),
    (arrays.int8_array, "bigint[]", [1, None]),
    (arrays.int4_array, "int[]", [5, -7, 2**31 - 1]),
    (arrays.int4_array, "int[]", [None]),
    (arrays.bytea_array, "bytea[]", [b"\x00\x01", b""]),
    (arrays.bytea_array, "bytea[]", [None, b"z"]),
    (arrays.int8_array, "bigint[]", []),
])
def test_values_arrive_as_psycopg_sends_them(conn: psycopg.Connection[Any], build: Any, sql_type: str,
                                             values: list[Any]) -> None:
    got = conn.execute(f"SELECT %b::{sql_type}", (build(values),)).fetchone()
    ref: Any = conn.execute(f"SELECT %b::{sql_type}", (values,)).fetchone() if values else ([],)
    assert got is not None and ref is not None
    assert got[0] == ref[0] == values
    unnested = conn.execute(f"SELECT x FROM unnest(%b::{sql_type}) WITH ORDINALITY AS u(x, n) ORDER BY n",
                            (build(values),)).fetchall()
    assert [r[0] for r in unnested] == values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.none() | _text, max_size=20), ints=st.lists(st.none() | st.integers(-(2**63), 2**63 - 1),
                                                                     max_size=20))
def test_arbitrary_columns_round_trip(conn: psycopg.Connection[Any], texts: list[str | None],
                                      ints: list[int | None]) -> None:
    row = conn.execute("SELECT %b::text[], %b::bigint[]",
                       (arrays.text_array(texts), arrays.int8_array(ints))).fetchone()
    assert row is not None and row[0] == texts and row[1] == ints


def test_out_of_range_and_nul_are_refused_by_the_server_as_before(conn: psycopg.Connection[Any]) -> None:
    for build, sql_type, values in ((arrays.int4_array, "int[]", [1, 2**31]), (arrays.int8_array, "bigint[]", [2**63]),
                                    (arrays.int8_array, "bigint[]", [None, -(2**63) - 1])):
        for param in (build(values), values):  # ours, then psycopg's own: the same refusal
            with pytest.raises(psycopg.errors.NumericValueOutOfRange):
                conn.execute(f"SELECT %b::{sql_type}", (param,))
    with pytest.raises(psycopg.DataError):  # as from psycopg's own dumping: text cannot hold NUL
        conn.execute("SELECT %b::text[]", (arrays.text_array(["a\x00b"]),))
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: psycopg's own dumping raises the same
        arrays.text_array(["\ud800"])
