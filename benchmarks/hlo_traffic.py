"""Memory traffic of the measure program on a GPU, from XLA's own compilation.

    bash benchmarks/setup_gpu_compile_env.sh          # once: .venv-gpu-compile
    .venv-gpu-compile/bin/python benchmarks/hlo_traffic.py [--t 16] [--batch-size 1024]

No GPU needed: the programs of `nv_vs_forward.py` (forward, floor, NV on every
layer of SimpleConv, NV + ANOVA + Goodfellow) and NV's same-equivariance form
(its 12 spatial layers; the inverse warps included), both NVs also with
``implementation="pallas"`` (a Triton kernel, compiled to PTX here too), are
compiled ahead of time for an H200-like target (sm_90, 132 SMs; JAX's
deviceless compilation with the CUDA plugin installed but no device visible),
on one batch of B samples × T transformations. For every kernel XLA emits (fusion, cuDNN/cuBLAS call, copy)
the script adds the bytes of its outputs (written) and of its operands (read;
an operand used only through slices counts as the slices), and prints the
totals per batch. The measure streams batches through `lax.scan`, so these
per-batch figures are its per-step traffic; where the programs are limited by
memory bandwidth, time ratios follow these ratios.

Autotuning needs a device and Triton GEMM tiling fails without one, so both
are off: kernel choices for convolutions and matmuls may differ from a real
run; fusion decisions, layouts and therefore the traffic of the measure's own
kernels are XLA's.
"""

from __future__ import annotations

import argparse
import os
import re
import time

os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_gpu_autotune_level=0"
                           " --xla_gpu_enable_triton_gemm=false")

import jax  # pylint: disable=g-import-not-at-top
from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

from invjax import measures as ms  # pylint: disable=g-import-not-at-top
from invjax._src import plan  # pylint: disable=g-import-not-at-top
from nv_vs_forward import setup  # pylint: disable=g-import-not-at-top

# One H200 as XLA's GPU compiler sees it (stream_executor GpuDeviceInfoProto).
H200 = """
gpu_device_info {
  threads_per_block_limit: 1024  threads_per_warp: 32
  shared_memory_per_block: 49152  shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048  core_count: 132  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  memory_bandwidth: 4800000000000  l2_cache_size: 52428800  clock_rate_ghz: 1.98
  device_memory_size: 150000000000
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  cuda_compute_capability { major: 9 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H200"
"""

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
         "while", "conditional", "call", "after-all", "partition-id"}


def _nbytes(shape: str, workspace: bool = True) -> int:
  """Bytes of the arrays in an HLO shape; byte arrays only if ``workspace``."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if not workspace and dtype in ("u8", "s8"):
      continue                      # cuDNN/cuBLAS scratch space, not data
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def _computations(hlo: str) -> dict[str, list[tuple]]:
  """{computation: [(name, opcode, shape, operands, attributes)]}.

  A parameter's "operands" are its number, as text.
  """
  comps, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head:
      current = head.group(1)
      comps[current] = []
      continue
    m = _INSTR.match(line) if current else None
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    depth, i = 1, 0
    while depth and i < len(rest):          # the operand list's closing ')'
      depth += {"(": 1, ")": -1}.get(rest[i], 0)
      i += 1
    args = rest[:i - 1]
    comps[current].append((name, opcode, shape, args if opcode == "parameter"
                           else re.findall(r"%([\w.\-]+)", args), rest[i:]))
  return comps


def traffic(hlo: str) -> tuple[int, int, int]:
  """(kernels, bytes written, bytes read) of one execution of the module."""
  comps = _computations(hlo)
  entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo, re.M).group(1)
  sizes = {(c, i[0]): _nbytes(i[2]) for c, ins in comps.items() for i in ins}

  def operand_bytes(comp, operands, fused):
    """Operands read by a kernel; one used only through slices reads those."""
    total = 0
    body = comps.get(fused, [])
    for k, op in enumerate(operands):
      full = sizes.get((comp, op), 0)
      param = [i[0] for i in body if i[1] == "parameter" and i[3] == str(k)]
      if param:
        def uses(n):
          out = []
          for i in body:
            if i[1] != "parameter" and n in i[3]:
              out += uses(i[0]) if i[1] in ("bitcast", "reshape") else [i]
          return out
        users = uses(param[0])
        if users and all(u[1] in ("slice", "dynamic-slice") for u in users):
          full = min(full, sum(sizes[(fused, u[0])] for u in users))
      total += full
    return total

  kernels = written = read = 0
  todo, seen = [entry], set()
  while todo:
    comp = todo.pop()
    if comp in seen:
      continue
    seen.add(comp)
    for name, opcode, shape, operands, attrs in comps[comp]:
      if opcode in ("while", "conditional", "call"):
        # Loop bodies count once (one batch: the scans run once); every branch
        # of a conditional counts, an upper bound.
        todo += re.findall(r"(?:body|condition|true_computation|"
                           r"false_computation|to_apply)=%?([\w.\-]+)", attrs)
        branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
        todo += re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else []
      if opcode in _FREE:
        continue
      fused = re.search(r"calls=%?([\w.\-]+)", attrs)
      kernels += 1
      written += _nbytes(shape, workspace=opcode != "custom-call")
      read += operand_bytes(comp, operands, fused.group(1) if fused else None)
  return kernels, written, read


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--t", type=int, default=16)
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--channels", type=int, default=32)
  p.add_argument("--dump", help="folder for the optimized HLO of each program")
  args = p.parse_args()

  topology = topologies.get_topology_desc(
      platform="cuda", target_config=H200, topology="1x1x1")
  mesh = topologies.make_mesh(topology, (1,), ("x",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                            sharding=replicated)

  b = args.batch_size
  s = setup(b, args.t, b, args.channels)           # one batch: N = B
  params = jax.tree.map(abstract, s.variables)
  lowered = {
      "forward": s.forward.lower(params, abstract(s.batches)),
      "floor": s.floor.lower(params, abstract(s.batches)),
  }
  for name, measures in [
      ("measure", ms.normalized_variance()),
      ("measure, pallas", ms.normalized_variance(implementation="pallas")),
      ("combined", [ms.normalized_variance(), ms.anova_f(), ms.goodfellow()]),
      ("same-equivariance", ms.normalized_variance_same_equivariance()),
      ("same-equivariance, pallas",
       ms.normalized_variance_same_equivariance(implementation="pallas"))]:
    fn, fn_args, _ = plan.prepare(  # pylint: disable=protected-access
        s.acts, s.images, s.ts, measures, batch_size=b, labels=None,
        stratify=False, layers=None, transform_chunk=None, mesh=None)
    lowered[name] = fn.lower(*jax.tree.map(abstract, fn_args))

  print(f"target: {topology.devices[0].device_kind} (deviceless), SimpleConv "
        f"C={args.channels}, every layer tapped, one batch of B={b} × T={args.t}")
  print("| program | kernels | GB written | GB read | GB moved | × forward "
        "| compile s |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  forward = None
  for name, low in lowered.items():
    t0 = time.perf_counter()
    hlo = low.compile().as_text()
    seconds = time.perf_counter() - t0
    if args.dump:
      os.makedirs(args.dump, exist_ok=True)
      with open(os.path.join(args.dump, f"{name}.hlo.txt"), "w") as f:
        f.write(hlo)
    k, w, r = traffic(hlo)
    forward = forward or (w + r)
    print(f"| {name} | {k} | {w / 1e9:.2f} | {r / 1e9:.2f} | "
          f"{(w + r) / 1e9:.2f} | {(w + r) / forward:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
  main()
