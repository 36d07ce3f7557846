"""jsonl files: one reader (every bad line an error naming file and line), one atomic writer, and the
append-and-resume reader of files r1lab appends to. Cold-start data is written by r1lab/cold_start.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from r1lab import R1labError


def read_jsonl(path: str | Path, torn_tail: bool = False) -> list[tuple[int, dict]]:
    """(line number, row) for each JSON object line; a missing file, text that is not UTF-8 or a bad line
    (invalid JSON, JSON nested too deeply for Python, not an object) is an error naming the file and line.
    With `torn_tail` (files r1lab appends to), a last line without its newline, a write cut short by a
    kill, is dropped."""
    path = Path(path)
    if not path.is_file():
        raise R1labError(f"{path}: file not found")
    data = path.read_bytes()
    if torn_tail:
        data = data[:data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise R1labError(f"{path}, line {line}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") \
            from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):                 # not splitlines: a JSON string may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise R1labError(f"{path}, line {number}: invalid JSON ({e.msg})") from None
        except ValueError as e:                                         # an integer of over 4300 digits
            raise R1labError(f"{path}, line {number}: JSON Python cannot read ({str(e).split(';')[0]})") from None
        except RecursionError:                                          # e.g. '[' * 100000
            raise R1labError(f"{path}, line {number}: JSON nested too deeply for Python to read; "
                             "expected an object of at most a few hundred levels") from None
        if not isinstance(row, dict):
            raise R1labError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def resume_appending(path: str | Path) -> list[dict]:
    """The rows of a jsonl file r1lab appends to (eval samples, teacher caches), before appending more:
    a torn last line (a kill mid-write) is cut from the file, so the next row starts on a line of its own."""
    path = Path(path)
    if not path.exists():
        return []
    rows = [row for _, row in read_jsonl(path, torn_tail=True)]
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)
    return rows


def write_atomic(path: str | Path, text: str) -> None:
    """Write through a temporary file and a rename: a kill leaves the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
