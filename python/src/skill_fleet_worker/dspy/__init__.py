"""DSPy integration: report an optimization run to skill-fleet with no change to the program.

``python -m skill_fleet_worker.dspy run my_program.py`` runs a program under the server;
:class:`SkillFleetCallback` is the callback it installs, usable on its own too.
Importing this package needs DSPy (``pip install 'skill-fleet-worker[dspy]'``).
"""

from .callback import GepaCallback, SkillFleetCallback, StopRun

__all__ = ["GepaCallback", "SkillFleetCallback", "StopRun"]
