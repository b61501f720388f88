"""Whole audits through securefl's real DP classes: correct DP is never over-audited, every
``--break`` variant is caught, and training without DP is flagged (toy data, CI-sized)."""

from __future__ import annotations

import pytest

from securefl.audit import AuditConfig, Break, run_audit
from securefl.config import CentralDPConfig, DPConfig, RunConfig
from securefl.data import load_dataset
from securefl.errors import ConfigError
from securefl.privacy import epsilon_spent

TOY = load_dataset("toy", seed=0)
BASE = {"dataset": "toy", "model": "mlp", "clients": 1, "rounds": 4, "local_epochs": 1, "batch_size": 2}
CANARIES = 1000


def audit(mode: str, noise: float, weakness: Break | None = None) -> object:
    if mode == "dp":
        run = RunConfig(**BASE, momentum=0.0, lr=0.1, dp=DPConfig(noise_multiplier=noise))
        config = AuditConfig(run=run, canaries=CANARIES, full_batch=True, weakness=weakness)
    else:
        run = RunConfig(**BASE, momentum=0.0, lr=0.1, central_dp=CentralDPConfig(noise_multiplier=noise))
        config = AuditConfig(run=run, canaries=CANARIES, weakness=weakness)
    return run_audit(config, dataset=TOY)


@pytest.mark.parametrize("mode", ["dp", "central-dp"])
def test_correct_dp_is_never_over_audited(mode):
    """Ten audits at three noise levels.  A correct mechanism may exceed its ε in at most β = 5% of
    runs by chance; P[Binomial(10, 0.05) >= 4] = 0.001, so 4 or more would mean a broken mechanism."""
    results = [audit(mode, noise) for noise in (0.7, 1.0, 2.0, 0.7, 1.0, 2.0, 0.7, 1.0, 2.0, 1.0)]
    violations = sum(r.epsilon_lower_bound > r.accountant_epsilon for r in results)
    assert violations <= 3
    assert all(r.rounds_observed == 4 for r in results)
    # the audit has power: white-box Dirac canaries reach a fair share of the claim
    assert min(r.epsilon_lower_bound / r.accountant_epsilon for r in results) > 0.1


@pytest.mark.parametrize("mode", ["dp", "central-dp"])
@pytest.mark.parametrize(
    ("weakness", "noise"), [(Break("noise"), 4.0), (Break("clip"), 4.0), (Break("sample-rate", 0.05), 2.0)]
)
def test_every_break_is_caught(mode, weakness, noise):
    """Claims of 2.17 (noise, clip) and 0.40 (sample rate told 1/20 of the truth); simulated
    audits of the same mechanisms never came within 0.4 of them in 300 tries."""
    result = audit(mode, noise, weakness)
    assert result.violation, (result.epsilon_lower_bound, result.accountant_epsilon)


def test_claim_under_a_break_is_what_the_correct_run_claims():
    correct, broken = audit("dp", 2.0), audit("dp", 2.0, Break("noise"))
    assert broken.accountant_epsilon == pytest.approx(correct.accountant_epsilon, rel=1e-9)
    # the correct claim is the trainer's own accountant: (z, q = 1, 4 rounds of one step)
    assert correct.accountant_epsilon == pytest.approx(
        epsilon_spent(((2.0, 1.0, 4),), accountant="rdp", delta=1e-5), rel=1e-9
    )


def test_training_without_dp_audits_near_the_ceiling():
    run = RunConfig(**BASE, momentum=0.0, lr=0.1)
    result = run_audit(AuditConfig(run=run, canaries=CANARIES, full_batch=True), dataset=TOY)
    assert result.accountant_epsilon == float("inf")
    assert result.epsilon_lower_bound > 0.8 * result.ceiling
    assert result.epsilon_lower_bound > 4  # what 1000 canaries can show at all is about 5.8


def test_black_box_canaries_flag_memorisation_and_stay_under_dp():
    digits = load_dataset("digits", seed=0)
    base = {**BASE, "dataset": "digits", "rounds": 1, "local_epochs": 40, "batch_size": 32, "lr": 0.1}
    plain = run_audit(AuditConfig(run=RunConfig(**base), canaries=200, black_box=True), dataset=digits)
    assert plain.epsilon_lower_bound > 1.0  # the model memorised its mislabelled canaries
    assert plain.history.final.evaluation.accuracy > 0.85
    private = RunConfig(**base, dp=DPConfig(noise_multiplier=1.0))
    result = run_audit(AuditConfig(run=private, canaries=200, black_box=True), dataset=digits)
    assert result.epsilon_lower_bound <= result.accountant_epsilon


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"canaries": 1}, "canaries"),
        ({"confidence": 1.0}, "confidence"),
        ({"canary_scale": 0.5}, "canary scale"),
        ({"weakness": Break("noise")}, "`weakness`"),
        ({"full_batch": True, "run": RunConfig(**{**BASE, "clients": 2})}, "`full_batch`"),
        ({"run": RunConfig(**BASE, dp=DPConfig(), central_dp=CentralDPConfig())}, "one DP mode"),
        ({"canaries": 20_001}, "canaries"),
        ({"black_box": True, "run": RunConfig(**BASE, central_dp=CentralDPConfig())}, "`black_box`"),
        (
            {
                "run": RunConfig(**BASE, central_dp=CentralDPConfig(client_sampling="fixed")),
                "weakness": Break("sample-rate"),
            },
            "poisson",
        ),
    ],
)
def test_bad_audit_configurations_say_what_to_change(changes, message):
    values = {"run": RunConfig(**BASE), **changes}
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**values)


def test_bad_breaks_are_refused():
    with pytest.raises(ConfigError, match="unknown break"):
        Break("everything")
    with pytest.raises(ConfigError, match="factor"):
        Break("noise", 1.5)
