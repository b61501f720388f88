"""What a curious server can learn from what it observes: gradient inversion and its measurement.

- :mod:`~securefl.attacks.observation`: the threat model, exactly what the server saw.
- :mod:`~securefl.attacks.inversion`: DLG, iDLG, Inverting Gradients (observation -> images).
- :mod:`~securefl.attacks.metrics`: PSNR, SSIM, MSE, label accuracy, best-match pairing.
- :mod:`~securefl.attacks.defences`: one frozen class per defence (none / clip / prune / noise /
  dp / secagg / distributed-dp) whose ``observe`` plays the victim's round through securefl's own
  client, DP and secure-aggregation code.
- :mod:`~securefl.attacks.experiment`: victims -> rounds -> attacks -> scores; comparisons.
- :mod:`~securefl.attacks.report`: reconstruction.png, metrics.json, arrays.npz, compare.png/json.

A malicious server (it chooses the model it sends; defences in :mod:`securefl.defences`):

- :mod:`~securefl.attacks.imprint`: the binned imprint layer of Fowl et al. (ICLR 2022) and
  reading it back from an observation.
- :mod:`~securefl.attacks.malicious`: the server's models through the clients' defences, their
  trainers and secure aggregation; imprint and model inconsistency (Pasquini et al., CCS 2022).
"""

from securefl.attacks.defences import (
    DEFENCES,
    ClipDefence,
    Defence,
    DistributedDPDefence,
    DPSGDDefence,
    NoDefence,
    NoiseDefence,
    PruneDefence,
    RoundFacts,
    SecAggDefence,
)
from securefl.attacks.experiment import (
    COMPARISON_DEFENCES,
    AttackOutcome,
    ExperimentConfig,
    prepare,
    run_attack,
    run_comparison,
)
from securefl.attacks.inversion import ATTACKS, AttackConfig, Reconstruction, infer_labels, reconstruct
from securefl.attacks.metrics import best_match, label_accuracy, mse, psnr, ssim
from securefl.attacks.observation import Observation, ObservedKind, PublicKnowledge

__all__ = [
    "ATTACKS",
    "COMPARISON_DEFENCES",
    "DEFENCES",
    "AttackConfig",
    "AttackOutcome",
    "ClipDefence",
    "DPSGDDefence",
    "Defence",
    "DistributedDPDefence",
    "ExperimentConfig",
    "NoDefence",
    "NoiseDefence",
    "Observation",
    "ObservedKind",
    "PruneDefence",
    "PublicKnowledge",
    "Reconstruction",
    "RoundFacts",
    "SecAggDefence",
    "best_match",
    "infer_labels",
    "label_accuracy",
    "mse",
    "prepare",
    "psnr",
    "reconstruct",
    "run_attack",
    "run_comparison",
    "ssim",
]
