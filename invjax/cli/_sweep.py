"""``invjax sweep``: runs a sweep file's cells, resumable and sharded.

Its parser (`_add_sweep_parser`) and command (`_sweep_command`), for
`invjax.cli.main`; the sweep machinery is `invjax._src.sweep`.
"""

from __future__ import annotations

import argparse
import json

from invjax.cli._flags import _add_compile_cache_flag


def _add_sweep_parser(sub) -> None:
  s = sub.add_parser(
      "sweep", help="run a sweep file's cells (resumable, sharded) into one "
      "table",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Runs the cells of a sweep file (get_config, get_sweep, "
      "run; see invjax.sweep) that are not complete in DIR, each into "
      "DIR/cells/<id>/, then writes the tidy table DIR/results.parquet "
      "(invjax.sweep.load). Rerunning skips completed cells and resumes "
      "interrupted ones.",
      epilog="""examples:
  invjax sweep my_sweep.py --out runs/s --list          # cells and their state
  invjax sweep my_sweep.py --out runs/s                 # every cell, here
  invjax sweep my_sweep.py --out runs/s \\
      --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   # one array task
  invjax sweep my_sweep.py --out runs/s --collect       # rebuild the table""")
  s.add_argument("file", metavar="FILE", help="the sweep file (.py)")
  s.add_argument("--out", default=None, metavar="DIR",
                 help="the sweep's folder (default: runs/<file name>)")
  s.add_argument("--shard", default="0/1", metavar="i/n",
                 help="run only cells k with k mod n = i (default 0/1: all)")
  s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a base-config value for every cell "
                 "(repeatable; not a swept key)")
  s.add_argument("--list", action="store_true",
                 help="list the shard's cells (done, started, todo) and exit")
  s.add_argument("--collect", action="store_true",
                 help="rebuild DIR/results.parquet from every complete cell "
                 "(after shards on several hosts) and exit")
  s.add_argument("--quiet", action="store_true",
                 help="no progress bar (on stderr)")
  _add_compile_cache_flag(s)


def _sweep_command(args: argparse.Namespace) -> int:
  import os  # pylint: disable=g-import-not-at-top
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  from invjax._src import sweep_cells  # pylint: disable=g-import-not-at-top

  def fail(msg: str):
    raise SystemExit(f"invjax sweep: error: {msg}")

  out = args.out or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.file))[0])
  try:
    shard = sweep.parse_shard(args.shard)
    settings = sweep.parse_set(args.set)
    module = sweep.load_module(args.file)
    if args.list:
      rows = sweep.status(module, out, shard=shard, settings=settings)
      for cell, state in rows:
        print(f"{cell.index:>4}  {state:<7}  {cell.id}  "
              f"{json.dumps(cell.overrides, sort_keys=True)}")
      done = sum(state == "done" for _, state in rows)
      print(f"{done} of {len(rows)} cells done (shard {shard[0]}/{shard[1]},"
            f" {out})")
      return 0
    if args.collect:
      table = sweep.collect(out)
    else:
      table = sweep.run(module, out, shard=shard, settings=settings,
                        progress=not args.quiet)
    everything = sweep.status(module, out, settings=settings)
  except ValueError as e:
    fail(str(e))
  done = sum(state == "done" for _, state in everything)
  print(f"{done} of {len(everything)} cells complete in {out}; "
        f"{os.path.join(out, sweep_cells.TABLE_FILE)}: {len(table)} rows")
  return 0
