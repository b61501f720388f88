"""Client-side defences against a malicious server, one idea per module.

Secure aggregation hides each update from an honest-but-curious server; a server that edits the
model it sends defeats it (:mod:`securefl.attacks.malicious`).  These checks run in the client
program on what it received, before it trains:

- :mod:`~securefl.defences.consistency`: the hash of the received model and round settings is
  bound into the secure-aggregation session (signatures and pairwise masks), so clients shown
  different models cannot be summed together (defeats model inconsistency in active mode, proof
  there; in passive mode nothing authenticates the peers, so only the protocol-following attack
  is stopped);
- :mod:`~securefl.defences.pinning`: the federation's config fixes the architecture; any other
  model is refused (defeats added imprint layers); the client builds that model itself and loads
  only the server's flat parameter vector;
- :mod:`~securefl.defences.checks`: the received weights are inspected on the client's own batch
  for the structure of known attacks (binning layers, switched-off layers), in the spirit of
  Garov et al. (2023); an adaptive attacker can build weights that pass them (SEER does).

Each is on by default and can be turned off for research.
"""

from securefl.defences import checks
from securefl.defences.consistency import model_context
from securefl.defences.pinning import ArchitecturePin, pin_for

__all__ = ["ArchitecturePin", "checks", "model_context", "pin_for"]
