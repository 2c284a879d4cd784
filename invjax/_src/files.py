"""Crash-safe file writes and a JSON-lines reader that survives a torn write.

A file rewritten in place (``open(path, "w")`` then a write) is empty or cut
short if the process dies between the two, and the next run reads garbage.
`atomic_open` writes a temporary file in the same directory, flushes and
fsyncs it, and renames it over ``path`` (`os.replace`, atomic on POSIX and
Windows), so a reader sees the old file or the new one, never a mix.

Append-only logs (JSON lines) are not rewritten on every record; a process
killed mid-append leaves a partial last line, which `read_jsonl` drops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import IO, Iterator


def _fsync_directory(directory: str) -> None:
  # Makes the rename itself durable (POSIX); directories cannot be opened
  # this way on Windows, where the rename is durable once it returns.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file that replaces ``path`` when the block exits.

  On an exception inside the block the temporary file is removed and
  ``path`` is left as it was. The new file gets the permissions a plain
  ``open`` would give it (0o666 less the umask).

  Args:
    path: the file to (re)write; a symbolic link is followed, so the link
      stays and its target is replaced.
    mode: ``"wb"`` or ``"w"`` (text, UTF-8).

  Yields:
    The open temporary file.
  """
  if mode not in ("wb", "w"):
    raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
  path = os.fspath(path)
  if os.path.islink(path):
    path = os.path.realpath(path)
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
  # O_EXCL: never clobber another writer's temporary file.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else
                                {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (see `atomic_open`)."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically (see `atomic_open`)."""
  with atomic_open(path, "w") as f:
    f.write(text)


def fsync_file(path: str | os.PathLike) -> None:
  """Flushes an existing file's data to disk (no-op if it does not exist)."""
  try:
    fd = os.open(os.fspath(path), os.O_RDONLY)
  except FileNotFoundError:
    return
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], bool]:
  """The JSON objects of a JSON-lines file, one per non-blank line.

  A last line that does not parse (with or without its newline) is what a
  process killed mid-append leaves; it is dropped. A bad line anywhere else,
  or a line holding JSON other than an object, is damage no crash explains,
  and an error.

  Args:
    path: the file; a missing file reads as empty.

  Returns:
    ``(records, dropped)``: the records, and whether a torn last line was
    dropped.

  Raises:
    ValueError: a line other than the last does not parse, or a line is not
      a JSON object (the message names the file and the line number).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return [], False
  lines = raw.split(b"\n")
  # Index of the last non-blank line: only it may be torn.
  last = max((i for i, l in enumerate(lines) if l.strip(b" \t\r\x00")),
             default=-1)
  records = []
  for i, line in enumerate(lines[:last + 1]):
    if not line.strip(b" \t\r\x00"):
      continue
    try:
      record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      if i == last:
        return records, True
      raise ValueError(f"{path}, line {i + 1}: not a JSON object ({e}); the "
                       "file is damaged") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}, line {i + 1}: expected a JSON object, got "
                       f"{type(record).__name__}")
    records.append(record)
  return records, False
