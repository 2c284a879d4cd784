"""``invjax plot``: draws result files (heat map, per-layer curves, seeds).

Its parser (`_add_plot_parser`) and command (`_plot_command`), for
`invjax.cli.main`.
"""

from __future__ import annotations

import argparse

_PLOT_KINDS = ("heatmap", "curves", "seeds")


def _add_plot_parser(sub) -> None:
  p = sub.add_parser(
      "plot", help="draw result files (heat map, per-layer curves, seeds)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Draws invjax result files (.npz, from `invjax measure` or "
      "MeasureResult.save) to an image file.",
      epilog="""kinds:
  heatmap  one file: every unit of every layer, one column per layer
  curves   one or more files: the per-layer mean of each, one curve per file
           (labels: --labels, one per file; default the file names)
  seeds    several files, one per random seed: per-layer mean +- std per
           group; give --labels with one label per file, and files with
           the same label form one group (--mark-significant stars layers
           where two groups differ)

examples:
  invjax plot invjax_result.npz -o heatmap.png
  invjax plot plain.npz aug.npz --kind curves --labels plain augmented -o c.png
  invjax plot small.npz deep.npz --kind curves --depth relative -o depth.png
  invjax plot p0.npz p1.npz p2.npz a0.npz a1.npz a2.npz --kind seeds \\
      --labels plain plain plain aug aug aug --mark-significant -o seeds.png""")
  p.add_argument("results", nargs="+", metavar="RESULT.npz",
                 help="result files written by MeasureResult.save")
  p.add_argument("--kind", choices=_PLOT_KINDS, default="heatmap",
                 help="what to draw (default: heatmap)")
  p.add_argument("-o", "--output", default="invjax_plot.png",
                 help="image file; the extension picks the format (.png, "
                 ".pdf, .svg; default: invjax_plot.png)")
  p.add_argument("--depth", choices=("index", "relative"), default="index",
                 help="x axis of curves/seeds: layer names (index) or "
                 "0-100%% of each model's depth (relative), for models of "
                 "different depth")
  p.add_argument("--labels", nargs="+", default=None,
                 help="one label per file (curves, seeds)")
  p.add_argument("--title", default=None)
  p.add_argument("--log", action="store_true", help="log-scale y axis")
  p.add_argument("--no-sort", action="store_true",
                 help="heatmap: keep the unit order instead of sorting")
  p.add_argument("--mark-significant", action="store_true",
                 help="seeds, two groups: star layers whose means differ")
  p.add_argument("--test", choices=("welch", "tukey"), default="welch",
                 help="seeds: the per-layer test (default: welch)")
  p.add_argument("--alpha", type=float, default=0.05,
                 help="seeds: significance level (default: 0.05)")


def _plot_command(args: argparse.Namespace) -> int:
  import os  # pylint: disable=g-import-not-at-top
  import invjax  # pylint: disable=g-import-not-at-top

  def fail(msg: str):
    raise SystemExit(f"invjax plot: error: {msg}")

  for path in args.results:
    if not os.path.isfile(path):
      fail(f"no such result file: {path}")
  if args.labels is not None and len(args.labels) != len(args.results):
    fail(f"--labels gives {len(args.labels)} labels for "
         f"{len(args.results)} files; give one label per file")
  results = []
  for path in args.results:
    try:
      results.append(invjax.load_result(path))
    except (ValueError, OSError, KeyError) as e:
      fail(f"cannot read {path} as an invjax result: {e}")
  yscale = "log" if args.log else "linear"
  try:
    if args.kind == "heatmap":
      if len(results) != 1:
        fail(f"--kind heatmap draws one file, got {len(results)}; use "
             "--kind curves to compare files")
      fig = invjax.plot.heatmap(results[0], sort=not args.no_sort,
                                title=args.title)
    elif args.kind == "curves":
      labels = args.labels or [os.path.splitext(os.path.basename(p))[0]
                               for p in args.results]
      fig = invjax.plot.layer_curves(results, labels=labels,
                                     depth=args.depth, title=args.title,
                                     yscale=yscale)
    else:
      if args.labels is None:
        fail("--kind seeds needs --labels, one per file; files with the "
             "same label form one group (e.g. --labels a a a b b b)")
      groups: dict = {}
      for label, r in zip(args.labels, results):
        groups.setdefault(label, []).append(r)
      fig = invjax.plot.seed_spread(
          groups, depth=args.depth, title=args.title,
          mark_significant=True if args.mark_significant else None,
          test=args.test, alpha=args.alpha, yscale=yscale)
      if args.mark_significant:
        a, b = list(groups)
        table = invjax.significance.compare_layers(
            groups[a], groups[b], test=args.test, alpha=args.alpha)
        width = max(len(l) for l in table)
        print(f"{args.test}: {a} vs {b}")
        for layer, row in table.items():
          star = " *" if row["significant"] else ""
          print(f"  {layer:<{width}}  {row['mean_a']:.4g} vs "
                f"{row['mean_b']:.4g}  p={row['pvalue']:.3g}{star}")
    fig.savefig(args.output, dpi=120)
  except ValueError as e:
    fail(str(e))
  print(f"wrote {args.output}")
  return 0
