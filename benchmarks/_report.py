"""What every benchmark's results file records: the commit and the machine."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def commit() -> str:
  """HEAD's short hash, marked when invjax/ has uncommitted changes."""
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                       capture_output=True, text=True, check=False)
  dirty = subprocess.run(["git", "status", "--porcelain", "--", "invjax"],
                         cwd=REPO, capture_output=True, text=True,
                         check=False).stdout.strip()
  return out.stdout.strip() + (" (invjax/ modified)" if dirty else "")


def machine() -> str:
  """The CPU model and the number of cores."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores"
