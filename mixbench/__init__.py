"""mixbench: a benchmark toolbox for mixup data augmentation in image classification.

The Python API, for a training loop of one's own (README, "Python API (your own training loop)"):

* ``build_method(name, **options)``: a mixing method with its paper's defaults; a composite one builds its
  children by name (``build_method("switch", choices=["mixup", "cutmix"])``);
* ``prepare_method(method, model, num_classes, seed=0, total_steps=N)``: the method set up for the model and
  bound to a seeded generator;
* ``build_model(name, num_classes, image_size, width=None, **options)``: a backbone of the benchmark;
* ``read_run(path)``, ``find_runs(root)``: reading the run directories ``tools/train.py`` writes;
  ``read_runs(root)``, ``build_table(root, table=None)``: runs grouped by configuration, and their table
  (:mod:`mixbench.report`).

These names are looked up on first use by a module-level ``__getattr__`` (PEP 562), not imported here.
Importing any submodule runs this file first, and ``import mixbench.config``, which every tool does to check a
command line before anything heavy, must not pull in torch, the methods, the models and the engine; an eager
import here would also make every module of the package depend on the engine, an import cycle in waiting.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "build_method": "mixbench.engine.method_config",
    "prepare_method": "mixbench.engine.build",
    "build_model": "mixbench.models",
    "read_run": "mixbench.rundir",
    "find_runs": "mixbench.rundir",
    "read_runs": "mixbench.report",
    "build_table": "mixbench.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The exported ``name``, imported from its module on first use (then cached in this module)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mixbench' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
