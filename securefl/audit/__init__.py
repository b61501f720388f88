"""Empirical privacy auditing: an ε lower bound from one training run, beside the accountant's ε.

- :mod:`securefl.audit.bound`: guess counts → ε lower bound (Steinke, Nasr, Jagielski 2023; pure math);
- :mod:`securefl.audit.guesses`: scores → guesses, best bound over a few guess counts;
- :mod:`securefl.audit.canaries`: white-box Dirac canaries (Nasr et al. 2023) and their inclusion bits;
- :mod:`securefl.audit.observe`: what the curious server reads each round;
- :mod:`securefl.audit.breaks`: deliberately broken DP mechanisms (research switch);
- :mod:`securefl.audit.run`: one audited run (:func:`run_audit`);
- :mod:`securefl.audit.report`: ``audit.json`` and ``audit.png``.
"""

from securefl.audit.bound import epsilon_lower_bound, max_epsilon_lower_bound, p_value
from securefl.audit.breaks import BREAKS, Break
from securefl.audit.run import AuditConfig, AuditResult, run_audit

__all__ = [
    "BREAKS",
    "AuditConfig",
    "AuditResult",
    "Break",
    "epsilon_lower_bound",
    "max_epsilon_lower_bound",
    "p_value",
    "run_audit",
]
