"""DSPy integration: report an optimization run to skill-fleet with no change to the program.

``python -m skill_fleet_worker.dspy run my_program.py`` runs a program under the server;
:class:`SkillFleetCallback` is the callback it installs, usable on its own too.
Using it needs DSPy (``pip install 'skill-fleet-worker[dspy]'``); importing this package
does not, so the runner can say so itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callback import GepaCallback, SkillFleetCallback, StopRun

__all__ = ["GepaCallback", "SkillFleetCallback", "StopRun"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import callback

        return getattr(callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
