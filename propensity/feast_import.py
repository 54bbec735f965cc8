"""Import Feast without its import-time type instrumentation.

Feast decorates its definition classes (FeatureView, Entity, the data sources, ...) with typeguard's
`@typechecked`. For each method of such a class, typeguard reads, parses and compiles the class's whole
source module again, when Feast is imported (compiled bytecode cannot help): about two thirds of
`import feast`, paid by every process that uses Feast, each pipeline step, the predictor, Spark's
Python workers (docs/decisions.md, "Feast imported without typeguard"). Python skips the
instrumentation under `python -O`; `prepare_feast_import` does the same for Feast alone (no other
locked library uses typeguard), keeping the rest of the process's checks (`assert`) on. What is lost
is a run-time check of the argument types of Feast's definition classes, which the project builds in
one place (feature_repo/definitions.py) that mypy checks and the tests run.

The packages that import Feast (`components`, `serving`, `feature_repo`) call it in their
`__init__`, which Python runs before any of their modules: the switch is in place before the first
`import feast` of the process. Once Feast is imported, calling it changes nothing.
"""

from __future__ import annotations

import sys
from typing import Any


def _typechecked(target: Any = None, **_options: Any) -> Any:
    """typeguard's `@typechecked` as `python -O` makes it: the target as it is (bare or with options)."""
    if target is None:
        return lambda decorated: decorated
    return target


def prepare_feast_import() -> None:
    """Make Feast's `@typechecked` a no-op, if Feast is not imported yet (afterwards it changes nothing)."""
    if "feast" in sys.modules:
        return
    import typeguard

    typeguard.typechecked = _typechecked  # idempotent: the same function each time
