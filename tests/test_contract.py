"""The promises every measure factory of `invjax.measures` keeps.

Parametrized over every public function of `invjax.measures` that returns a
`Measure` when called with its defaults (found by enumerating the module, so a
new factory is covered without editing this file), plus a few settings that
take other code paths (multi-pass Goodfellow, G-EED's identity reference and
pairwise normalization). On a small random (B, T, h, w, c) block:

(a) merging the states of two halves of the data equals the whole, to float32
    round-off (multi-pass measures merge after each pass, as the engine does);
(b) the block call is jit-able (the comparison in (a) runs under `jax.jit`);
(c) a second `invjax.measure` call does not recompile;
(d) the block value is differentiable (finite gradients) where the docs say
    so, including at invariant and constant units;
(e) a bad setting is a ValueError;
(f) a unit-wise measure (`base.Unitwise`) gives each of two layers laid side
    by side on one state, as the engine lays them (reduce on each layer's
    slice, or on blocks of units cut across layers as on CPU; one fold, one
    finalize), what `update` gives it alone.
"""

import inspect
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import base
from invjax._src import units

# Public callables of `invjax.measures` that need arguments and are not
# streamed measure factories (each takes a network or numbers, not settings).
# None now: the Lie derivatives, saliency invariance and the division rule
# moved to `invjax.lie`, `invjax.saliency` and `invjax.numerics`.
NOT_FACTORIES = {}

# One old `invjax.measures` name per moved group, and where it lives now.
MOVED = [
    ("lie_derivative", "invjax.lie", "lie_derivative"),
    ("saliency_invariance", "invjax.saliency", "saliency_invariance"),
    ("safe_divide", "invjax.numerics", "tmeasures_divide"),
]


def _factories() -> dict:
  found = {}
  for name in ms.__all__:
    fn = getattr(ms, name)
    if not inspect.isfunction(fn) or name in NOT_FACTORIES:
      continue
    params = inspect.signature(fn).parameters.values()
    if any(p.default is inspect.Parameter.empty for p in params):
      raise AssertionError(
          f"invjax.measures.{name} needs arguments: list it in NOT_FACTORIES "
          "or give its settings defaults")
    found[name] = fn
  return found


FACTORIES = _factories()

# Settings that take other code paths than the defaults.
VARIANTS = [
    ("goodfellow", {"threshold": "quantile"}),
    ("goodfellow", {"conditional": True}),
    ("geed", {"reference": "identity"}),
    ("geed", {"normalize": "pairwise"}),
    ("geed", {"distance": "euclidean"}),
    ("geed", {"distance": "kl"}),
    ("normalized_variance", {"statistic": "std"}),
]

CASES = [(name, {}) for name in sorted(FACTORIES)] + VARIANTS


def _id(case) -> str:
  name, kw = case
  return name + "".join(f"-{k}={v}" for k, v in kw.items())


def _aliases() -> dict:
  """{case id: id of the case with the same `Measure.key` tested instead}."""
  measures = {_id(c): FACTORIES[c[0]](**c[1]) for c in CASES}
  # The case named like its measure (normalized_distance, not
  # distance_invariance) is the original.
  order = sorted(measures, key=lambda i: measures[i].name != i)
  first, aliases = {}, {}
  for i in order:
    key = measures[i].key
    if key in first:
      aliases[i] = first[key]
    first.setdefault(key, i)
  return aliases


# An alias (e.g. distance_invariance = normalized_distance) computes what its
# original does (equal `Measure.key`), so (a) runs on the original only.
ALIASES = _aliases()


# The docs promise gradients for these (variance family: `objectives.nv_penalty`
# trains with them; G-EED, predictive and logit invariance: differentiable
# orbit statistics; the distances: safe_sqrt at 0, ND's graph holding TD's
# and SD's). The *_same_equivariance forms run the same block maths (their
# requires.inverse only tells the engine), so their plain forms stand for them.
DIFFERENTIABLE = {
    "transformation_variance", "sample_variance", "normalized_variance",
    "geed", "predictive_invariance", "logit_invariance",
    "normalized_distance",
}

# One bad setting per factory that takes settings.
BAD_SETTINGS = {
    "anova": {"alpha": 1.5},
    "distance_invariance": {"window": 0},
    "distance_same_equivariance": {"normalize": 1},
    "geed": {"distance": "l1"},
    "goodfellow": {"threshold": "max"},
    "normalized_distance": {"window": 2.5},
    "normalized_variance": {"zero_tolerance": -1.0},
    "normalized_variance_same_equivariance": {"implementation": "cuda"},
    "sample_distance": {"window": -1},
    "sample_variance": {"statistic": "median"},
    "sample_variance_same_equivariance": {"ddof": -1},
    "transformation_distance": {"normalize": "yes"},
    "transformation_variance": {"ddof": True},
    "transformation_variance_same_equivariance": {"statistic": "mad"},
}

B, T, SHAPE = 8, 4, (3, 3, 2)


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T) + SHAPE).astype(np.float32)
  x[:, :, 0, 0, 0] = x[:, :1, 0, 0, 0]     # a unit invariant along orbits
  x[:, :, 0, 0, 1] = 0.0                   # a constant unit
  ident = rng.normal(size=(B,) + SHAPE).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(ident)


def _block(x, ident, pass_index):
  b, t = x.shape[:2]
  return base.Block(x=x, mask=jnp.ones((b,), bool),
                    t_index=jnp.arange(t, dtype=jnp.int32),
                    t_mask=jnp.ones((t,), bool), first=jnp.array(True),
                    last=jnp.array(True), untransformed=ident,
                    pass_index=pass_index)


def _merged_halves(m: base.Measure, x, ident):
  """finalize(merge(half A, half B)), pass by pass as `Measure.__call__`."""
  h = x.shape[0] // 2
  spec = base.LayerSpec("block", tuple(x.shape[2:]), x.dtype, x.shape[1],
                        x.shape[1], h)
  state = m.init(spec)
  for p in range(m.requires.passes):
    # Both halves start from the state after the previous pass (`merge`
    # combines only the current pass's statistics).
    a = m.update(state, _block(x[:h], ident[:h], p))
    b = m.update(state, _block(x[h:], ident[h:], p))
    state = m.merge(a, b)
    if m.end_pass is not None:
      state = m.end_pass(state, p)
  return m.finalize(state, spec)


def _pair_keys(m: base.Measure) -> tuple[set, set]:
  """(outputs over sample pairs, outputs derived from them).

  Pair statistics do not form the pair straddling two merged sample sets
  (documented in `distance` and `geed`): merged, they are the mean over the
  union of both halves' pairs, which for equal halves is the mean of the
  halves' values.
  """
  if dict(m.settings).get("normalize") == "pairwise":
    return {"pairwise_distance"}, {"geed", "values"}
  if m.name.startswith("sample_distance"):
    return {"values"}, set()
  if m.name.startswith("normalized_distance"):
    return {"denominator"}, {"values"}
  return set(), set()


def _close(actual, expected, what):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected),
                             rtol=2e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_merge_of_halves_equals_whole_under_jit(case):
  if _id(case) in ALIASES:
    return
  name, kw = case
  m = FACTORIES[name](**kw)
  x, ident = _data()
  h = B // 2

  pairs, derived = _pair_keys(m)

  @jax.jit
  def run(x, ident):
    whole = m(x, untransformed=ident)
    # The halves' own values are needed only for pair statistics.
    halves = ((m(x[:h], untransformed=ident[:h]),
               m(x[h:], untransformed=ident[h:]))
              if pairs else (None, None))
    return whole, halves, _merged_halves(m, x, ident)

  whole, (first, second), merged = run(x, ident)
  assert set(merged) == set(whole)
  for key in whole:
    if key in derived:
      continue
    expected = ((first[key] + second[key]) / 2 if key in pairs
                else whole[key])
    _close(merged[key], expected, f"{_id(case)}: {key}")


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[0] in DIFFERENTIABLE
             and (c[0] == "geed" or not c[1])], ids=_id)
def test_block_value_is_differentiable(case):
  name, kw = case
  m = FACTORIES[name](**kw)
  x, ident = _data()
  loss = lambda x: jnp.sum(m(x, untransformed=ident)["values"])
  g = jax.jit(jax.grad(loss))(x)
  assert g.shape == x.shape
  assert np.all(np.isfinite(np.asarray(g))), _id(case)
  assert np.any(np.asarray(g) != 0), _id(case)


def _alone(m: base.Measure, x, ident, mask):
  """One layer's outputs through `update`, pass by pass."""
  b, t = x.shape[:2]
  spec = base.LayerSpec("layer", tuple(x.shape[2:]), x.dtype, t, t, b)
  state = m.init(spec)
  for p in range(m.requires.passes):
    state = m.update(state, _block(x, ident, p)._replace(mask=mask))
    if m.end_pass is not None:
      state = m.end_pass(state, p)
  return m.finalize(state, spec)


def _side_by_side(m: base.Measure, layers, block, loops):
  """Every layer's outputs from one state over all their units."""
  b, t = layers[0][0].shape[:2]
  specs = {f"l{i}": base.LayerSpec(f"l{i}", tuple(x.shape[2:]), x.dtype, t,
                                   t, b) for i, (x, _, _) in enumerate(layers)}
  lay = units.layout(list(specs), specs, block, loops)
  assert len(units.loop_groups(lay)) == loops
  state = units.widen(m.init(units.flat_spec(specs["l0"], lay)), lay.capacity,
                      m.name)
  for p in range(m.requires.passes):
    flat = {f"l{i}": _block(units.flatten(x, 2), units.flatten(ident, 1),
                            p)._replace(mask=mask)
            for i, (x, ident, mask) in enumerate(layers)}
    job = units.Job(m.unitwise.reduce, m.unitwise.fold, state, m.name, p)
    state, = units.update([job], lay, flat.__getitem__)
    if m.end_pass is not None:
      state = m.end_pass(state, p)
  whole = m.finalize(state, units.flat_spec(specs["l0"], lay))
  return units.split(dict(whole), lay,
                     {l: spec.shape for l, spec in specs.items()}, m.name)


UNITWISE = [c for c in CASES if FACTORIES[c[0]](**c[1]).unitwise is not None]


# 8-unit blocks: the 18-unit layer is cut at 0, 8 and 10 (its last block
# overlaps), the 5-unit one is padded to 8 past the end of the units. In two
# loops (a long run's), one per layer: the first loop's state slice ends
# where the second's begins. One loop over the blocks is what every other
# test of a measurement on CPU runs.
@pytest.mark.parametrize("block, loops", [(0, 1), (8, 2)],
                         ids=["by_layer", "blocks_in_two_loops"])
@pytest.mark.parametrize("case", UNITWISE, ids=_id)
def test_unitwise_layers_side_by_side_equal_each_alone(case, block, loops):
  name, kw = case
  m = FACTORIES[name](**kw)
  x, ident = _data()
  rng = np.random.default_rng(3)
  y = jnp.asarray(rng.normal(size=(B, T, 5)).astype(np.float32) * 3 + 1)
  y_ident = jnp.asarray(rng.normal(size=(B, 5)).astype(np.float32))
  # Layers leave out different samples (as the engine's finiteness masks
  # do), so their counts differ along the shared unit axis.
  all_in = jnp.ones((B,), bool)
  some_out = all_in.at[jnp.array([1, 6])].set(False)
  layers = [(x, ident, all_in), (y, y_ident, some_out)]
  joined = jax.jit(lambda: _side_by_side(m, layers, block, loops))()
  for i, (xi, ii, mask) in enumerate(layers):
    alone = _alone(m, xi, ii, mask)
    assert set(joined[f"l{i}"]) == set(alone)
    for key in alone:
      _close(joined[f"l{i}"][key], alone[key], f"{_id(case)}: l{i} {key}")


@pytest.mark.parametrize("sizes", [(18, 5), (5, 18, 3), (7, 7), (1024, 10),
                                   (3000, 128, 10, 4096)])
def test_unit_blocks_cover_every_unit_in_order(sizes):
  specs = {f"l{i}": base.LayerSpec(f"l{i}", (f,), jnp.float32, 4, 4, 8)
           for i, f in enumerate(sizes)}
  lay = units.layout(list(specs), specs, 8 if max(sizes) < 100 else 1024)
  if len(set(sizes)) == 1:
    assert lay.block == 0 and lay.capacity == lay.total
    return
  table = units.block_table(lay)
  # In unit order, so that a later block writes over what a padded block
  # spills past its layer; the last spill lands in the room at the end.
  assert np.all(np.diff(table[:, 2]) > 0), "blocks must come in unit order"
  u = lay.block
  assert table[:, 2].max() + u <= lay.capacity
  for i, (offset, f) in enumerate(zip(lay.offsets, lay.sizes)):
    rows = table[table[:, 0] == i]
    covered = np.zeros(max(f, u), bool)
    for _, start, at in rows:
      assert at == offset + start and start + u <= max(f, u)
      covered[start:start + u] = True
    assert covered[:f].all(), f"layer {i}: units left out"


@pytest.mark.parametrize("sizes, loops, want", [
    ((10, 12, 10, 12), 2, [2, 2]), ((10, 12, 10, 12), 3, [1, 2, 1]),
    ((100, 1, 1, 1), 3, [1, 3]), ((5, 7), 3, [1, 1]), ((4, 6, 8), 1, [3])])
def test_loop_groups_are_runs_of_about_equal_units(sizes, loops, want):
  specs = {f"l{i}": base.LayerSpec(f"l{i}", (f,), jnp.float32, 4, 4, 8)
           for i, f in enumerate(sizes)}
  groups = units.loop_groups(units.layout(list(specs), specs, 4, loops))
  # Consecutive runs covering every layer once; a layer of more than a
  # run's share of the units makes fewer runs.
  assert [len(g) for g in groups] == want
  assert [i for g in groups for i in g] == list(range(len(sizes)))


def test_unitwise_covers_the_variance_anova_and_goodfellow_families():
  names = {c[0] for c in UNITWISE}
  assert {"normalized_variance", "transformation_variance",
          "sample_variance", "normalized_variance_same_equivariance",
          "anova", "anova_f", "goodfellow"} <= names
  assert ms.goodfellow(threshold="quantile").unitwise is None
  assert ms.normalized_variance(implementation="pallas").unitwise is None


@pytest.mark.parametrize(
    "name", [n for n in sorted(FACTORIES)
             if inspect.signature(FACTORIES[n]).parameters], ids=str)
def test_bad_setting_is_a_value_error(name):
  assert name in BAD_SETTINGS, f"give {name} a bad setting in BAD_SETTINGS"
  with pytest.raises(ValueError):
    FACTORIES[name](**BAD_SETTINGS[name])


def _model(x):
  # One spatial layer: the same-equivariance measures need (h, w, c) maps.
  return {"map": jnp.tanh(x[..., :1] * 2.0 - x[..., 1:])}


def _all_measures():
  """A fresh instance of every factory's default, one per computation."""
  unique = {}
  for name in sorted(FACTORIES):
    m = FACTORIES[name]()
    unique.setdefault(m.key, m)
  return list(unique.values())


def test_no_recompile_on_second_call(caplog):
  # All factories in one call: one program, so one compilation to pay for.
  images = np.random.default_rng(1).uniform(size=(6, 6, 6, 2)).astype(
      np.float32)
  acts = invjax.capture.as_activations(_model)
  first = invjax.measure(acts, images, tr.rot90(), _all_measures(),
                         batch_size=4)
  # Fresh measure objects with equal settings must hit the same program.
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    second = invjax.measure(acts, images + 0.5, tr.rot90(), _all_measures(),
                            batch_size=4)
  compiled = [r for r in caplog.records if "Compiling" in r.getMessage()
              and "program" in r.getMessage()]
  assert not compiled, [r.getMessage() for r in compiled]
  assert len(first) == len(second) == len(_all_measures())
  assert any(a.per_layer["map"] != b.per_layer["map"]
             for a, b in zip(first, second))


def test_identity_keyword_is_a_deprecated_name_of_untransformed():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, 3, 5)).astype(np.float32)
  ident = rng.normal(size=(4, 5)).astype(np.float32)
  m = ms.geed(reference="identity")
  with pytest.warns(DeprecationWarning, match="untransformed="):
    old = m(x, identity=ident)
  np.testing.assert_array_equal(old["geed"], m(x, untransformed=ident)["geed"])
  with pytest.raises(ValueError, match="untransformed= only"):
    with pytest.warns(DeprecationWarning):
      m(x, identity=ident, untransformed=ident)


@pytest.mark.parametrize("old, module, new", MOVED, ids=[m[0] for m in MOVED])
def test_moved_name_still_works_and_warns(old, module, new):
  """The old `invjax.measures` path gives the same object, with a warning."""
  with pytest.warns(DeprecationWarning, match=f"is now {module}.{new}"):
    got = getattr(ms, old)
  assert got is getattr(getattr(invjax, module.split(".")[1]), new)
  assert old not in ms.__all__
  with pytest.raises(AttributeError):
    ms.no_such_measure  # pylint: disable=pointless-statement
