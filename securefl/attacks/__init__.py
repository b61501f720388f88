"""What a curious server can learn from what it observes: gradient-inversion attacks and metrics.

See :mod:`securefl.attacks.observation` (the threat model), :mod:`securefl.attacks.inversion`
(DLG, iDLG, Inverting Gradients) and :mod:`securefl.attacks.metrics` (PSNR, SSIM, pairing).
"""
