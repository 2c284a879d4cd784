"""JAX's persistent compilation cache, kept in the user's cache directory.

Compiling a measure program takes longer on CPU than running it; JAX can keep
compiled programs on disk so that a second process with the same program,
shapes and JAX version loads it instead of compiling it again. The command
line (`invjax measure`, `invjax train`, `invjax experiment`) and the
experiment runner turn this on by default; the library never does so by
itself, since importing a library must not write to the user's home.

    import invjax
    invjax.enable_compile_cache()        # ~/.cache/invjax/jax

The directory is, in order: the ``path`` argument, ``$INVJAX_COMPILE_CACHE``,
the directory JAX is already configured with (``$JAX_COMPILATION_CACHE_DIR``),
``$XDG_CACHE_HOME/invjax/jax``, ``~/.cache/invjax/jax``.
``INVJAX_NO_COMPILE_CACHE=1`` (or ``--no-compile-cache``) keeps the command
line and the runner from turning it on.

The cache is trusted code: do not point it at a directory others can write to
(see JAX's "Persistent compilation cache" guide).
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import jax

ENV_DIR = "INVJAX_COMPILE_CACHE"
ENV_OFF = "INVJAX_NO_COMPILE_CACHE"

# JAX writes only programs that took at least 1 s to compile by default. On
# CPU a whole-network measure or training step of a small model compiles in
# 0.2-2 s and loads from disk in milliseconds, so those should be kept too;
# below 0.1 s (single eager operations) a file per program is not worth it.
MIN_COMPILE_TIME_SECS = 0.1


def default_cache_dir(environ: Mapping[str, str] | None = None
                      ) -> pathlib.Path:
  """The cache directory `enable_compile_cache()` uses without a path.

  Args:
    environ: the environment to read (default: ``os.environ``).

  Returns:
    ``$INVJAX_COMPILE_CACHE`` if set, else the directory JAX is already
    configured with (``jax_compilation_cache_dir``, e.g. from
    ``$JAX_COMPILATION_CACHE_DIR``), else ``$XDG_CACHE_HOME/invjax/jax``,
    else ``~/.cache/invjax/jax`` (on macOS too, as most command-line tools
    do); as an absolute path.
  """
  env = os.environ if environ is None else environ
  if env.get(ENV_DIR):
    return pathlib.Path(env[ENV_DIR]).expanduser().absolute()
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return pathlib.Path(configured).expanduser().absolute()
  # An empty or relative XDG_CACHE_HOME is invalid per the XDG spec.
  xdg = env.get("XDG_CACHE_HOME", "")
  base = (pathlib.Path(xdg) if os.path.isabs(xdg)
          else pathlib.Path(env.get("HOME") or pathlib.Path.home()) / ".cache")
  return (base / "invjax" / "jax").absolute()


def disabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
  """Whether ``$INVJAX_NO_COMPILE_CACHE`` asks for no cache.

  Any value but empty, ``0``, ``false``, ``no`` or ``off`` does.
  """
  env = os.environ if environ is None else environ
  value = env.get(ENV_OFF, "").strip().lower()
  return value not in ("", "0", "false", "no", "off")


def enable_compile_cache(path: str | os.PathLike | None = None) -> str:
  """Keeps compiled programs on disk, for later processes to reuse.

  Sets JAX's ``jax_compilation_cache_dir`` and lowers
  ``jax_persistent_cache_min_compile_time_secs`` to 0.1 s (JAX's default of
  1 s would skip most CPU programs of small models) and removes the minimum
  entry size. Calling it again with the same directory changes nothing;
  with another directory, later compilations use the new one.

  JAX's own switch, ``jax_enable_compilation_cache=False``, still wins. A
  program whose lowering holds a host callback (e.g. ``invjax.measure(...,
  progress=True)``) is never written: JAX keys it by a pointer that differs
  between processes.

  Args:
    path: the directory; default `default_cache_dir()`
      (``$INVJAX_COMPILE_CACHE``, JAX's configured directory, or
      ``~/.cache/invjax/jax``). Created if missing.

  Returns:
    The directory used, as an absolute path.
  """
  directory = (default_cache_dir() if path is None
               else pathlib.Path(path).expanduser().absolute())
  directory.mkdir(parents=True, exist_ok=True)
  directory = str(directory)
  current = jax.config.jax_compilation_cache_dir
  if current != directory:
    if current:
      _forget_open_cache()
    jax.config.update("jax_compilation_cache_dir", directory)
  # Lower, never raise, a threshold the user may have set themselves.
  if jax.config.jax_persistent_cache_min_compile_time_secs > \
      MIN_COMPILE_TIME_SECS:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_TIME_SECS)
  if jax.config.jax_persistent_cache_min_entry_size_bytes == 0:
    # 0 lets JAX substitute a file-system dependent minimum; -1 means none.
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return directory


def enable_unless_disabled(disabled: bool = False) -> str | None:
  """The command line's and the experiment runner's default.

  Args:
    disabled: ``--no-compile-cache`` was given.

  Returns:
    The cache directory, or None when ``disabled`` or
    ``$INVJAX_NO_COMPILE_CACHE`` turned it off.
  """
  if disabled or disabled_by_environment():
    return None
  return enable_compile_cache()


def _forget_open_cache() -> None:
  # JAX opens its cache once per process, on the first compilation after a
  # directory is set; a new directory needs that handle dropped.
  try:
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass  # an older or newer JAX: the old directory stays in use
