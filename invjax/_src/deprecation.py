"""Names that moved: the old import path keeps working, with a warning.

A public module that lost a name ends with

    __getattr__ = deprecation.moved(__name__, {"old_name": ("invjax.new", "new_name")})

(PEP 562): ``from invjax.old import old_name`` and ``invjax.old.old_name`` then
return the object from its new home and raise a `DeprecationWarning` that
names it. The name stays out of the old module's ``__all__``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping


def moved(module: str, names: Mapping[str, tuple[str, str]]
          ) -> Callable[[str], Any]:
  """A module ``__getattr__`` serving each moved name from its new module.

  Args:
    module: the old module's ``__name__``.
    names: old name -> (new module, new name).

  Returns:
    The function to assign to the old module's ``__getattr__``.
  """

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    if name not in names:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new_module, new_name = names[name]
    warnings.warn(f"{module}.{name} is now {new_module}.{new_name}",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(new_module), new_name)

  return __getattr__
