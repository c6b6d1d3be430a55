#!/usr/bin/env python3
"""Fills in the expected results of sqllogictest files from plain SQLite (Python's sqlite3).

    python3 tests/slt/complete.py tests/slt/select.test [more.test …]

Each file is run from the top in a fresh in-memory SQLite database, the way SQLite's own
sqllogictest reference runner runs it (label `sqlite`): `statement ok` / `statement error` must
do what they say (the script stops naming the record otherwise), and every `query` record's
results are replaced by SQLite's answer, written as the reference runner writes them: one value
a line, NULL as `NULL`, an empty text as `(empty)`, control characters as `@`, `I` columns as
integers, `R` columns with three decimals, `rowsort`/`valuesort` applied, and more values than the
current `hash-threshold` written as `N values hashing to <md5>`. Records under `onlyif <label>`
for another label, or `skipif sqlite`, are kept as written and not run (DirkDB's own dialect lives
in dialect.test, whose results are written by hand). So the corpus's expectations come from
SQLite, not from DirkDB, and tests/sqllogictest_e2e.rs checks DirkDB against them.
"""

import hashlib
import sqlite3
import sys


def leading_number(text, kind):
    """SQLite's conversion of a text to a number: its longest numeric prefix, else 0."""
    text = text.strip()
    best = kind(0)
    for end in range(1, len(text) + 1):
        try:
            best = kind(float(text[:end])) if kind is int else float(text[:end])
        except ValueError:
            continue
    return best


def sqlite_real_text(v):
    """A REAL as SQLite's text conversion writes it (%!.15g)."""
    s = "%.15g" % v
    if "e" in s:
        mantissa, exponent = s.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + "e" + exponent
    return s if "." in s or "n" in s else s + ".0"


def render(value, kind):
    if value is None:
        return "NULL"
    if kind == "I":
        if isinstance(value, (bytes, str)):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return str(leading_number(text, int))
        return str(int(value))
    if kind == "R":
        if isinstance(value, (bytes, str)):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return "%.3f" % leading_number(text, float)
        return "%.3f" % float(value)
    if isinstance(value, float):
        text = sqlite_real_text(value)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if text == "":
        return "(empty)"
    return "".join(c if " " <= c <= "~" else "@" * len(c.encode()) for c in text)


def skipped(conditions):
    for word, label in conditions:
        if word == "onlyif" and label != "sqlite":
            return True
        if word == "skipif" and label == "sqlite":
            return True
    return False


def complete(path):
    blocks = open(path, encoding="utf-8").read().split("\n\n")
    db = sqlite3.connect(":memory:", isolation_level=None)
    threshold = 0
    out = []
    for block in blocks:
        lines = block.strip("\n").split("\n")
        conditions = []
        while lines and lines[0].split()[:1] in (["onlyif"], ["skipif"]):
            conditions.append(tuple(lines.pop(0).split()[:2]))
        head = lines[0].split() if lines and lines[0] else []
        if head[:1] == ["hash-threshold"]:
            threshold = int(head[1])
        if head[:1] not in (["statement"], ["query"]) or skipped(conditions):
            out.append(block)
            continue
        cond_lines = ["%s %s" % c for c in conditions]
        if head[0] == "statement":
            sql = "\n".join(lines[1:])
            try:
                db.execute(sql)
                ok = True
            except sqlite3.Error as e:
                ok, error = False, e
            if ok != (head[1] == "ok"):
                sys.exit("%s: `%s` %s in SQLite" % (path, sql, "succeeded" if ok else "failed: %s" % error))
            out.append(block)
            continue
        types = head[1]
        sort = head[2] if len(head) > 2 else "nosort"
        end = lines.index("----") if "----" in lines else len(lines)
        sql = "\n".join(lines[1:end])
        try:
            rows = db.execute(sql).fetchall()
        except sqlite3.Error as e:
            sys.exit("%s: query `%s` failed in SQLite: %s" % (path, sql, e))
        rows = [[render(v, types[i] if i < len(types) else "T") for i, v in enumerate(r)] for r in rows]
        if sort == "rowsort":
            rows.sort()
        values = [v for r in rows for v in r]
        if sort == "valuesort":
            values.sort()
        if threshold and len(values) > threshold:
            md5 = hashlib.md5("".join(v + "\n" for v in values).encode()).hexdigest()
            values = ["%d values hashing to %s" % (len(values), md5)]
        out.append("\n".join(cond_lines + lines[:end] + ["----"] + values))
    open(path, "w", encoding="utf-8").write("\n\n".join(b.strip("\n") for b in out) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        complete(name)
