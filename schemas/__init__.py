"""The Arrow schemas of vl2prep's rows (samples, rejects, shards): explicit, versioned, documented."""

from __future__ import annotations

import pyarrow as pa


def table_of(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of exactly `schema`; a null in a non-nullable top-level column is a ValueError
    naming the column (Arrow itself does not check nullability when building from Python)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    for field, column in zip(schema, table.columns, strict=True):
        if not field.nullable and column.null_count:
            raise ValueError(f"column {field.name!r} may not be null ({column.null_count} null values)")
    return table
