"""The figures of issue 6, measured: what a curious server reconstructs, and what defences take away.

Sections (all by default; one thread; every figure printed next to its target):

- ``labels``: iDLG's analytic label over (seed, image) pairs at batch 1, sigmoid LeNet (DLG's
  uniform init and PyTorch's default init) and the ReLU CNN; target 100% over >= 100 pairs each.
- ``dlg``: DLG and iDLG on single mnist-sample test digits, sigmoid LeNet initialised U(-0.5, 0.5)
  by the server, float64 round; target: >= 80% of 20 digits at PSNR >= 40 dB, each <= 60 s,
  <= 8 restarts.
- ``init``: iDLG with the server's model choices: U(-0.5, 0.5) in float64 and float32, PyTorch's
  default init; not a target, it shows what the uniform initialisation is worth.
- ``ig``: Inverting Gradients on 32x32 colour crops (``images``), LeNet with PyTorch's default
  init; target: median PSNR >= 20 dB, <= 30 s per image.
- ``defences``: the ``securefl attack compare`` rows on the same victims; target: DP-SGD z=1 and
  SecAgg N >= 16 within 3 dB of the trivial-guess (mean image) baseline, clipping alone not.

    .venv/bin/python benchmarks/attacks.py [labels|dlg|init|ig|defences ...] [--images N] [--compare-images K]
        [--attack-for-defences dlg|idlg|ig] [--dataset-for-defences mnist-sample|images]
        [--restarts-for-defences R] [--iterations-for-defences I]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from securefl.attacks.defences import NoDefence
from securefl.attacks.experiment import ExperimentConfig, prepare, run_attack, run_comparison, server_model
from securefl.attacks.inversion import infer_labels
from securefl.attacks.observation import PublicKnowledge
from securefl.data import load_dataset
from securefl.fl.types import ClientShard


def labels_section(pairs_per_model: int) -> None:
    dataset = load_dataset("mnist-sample")
    print(f"\n## iDLG label recovery, batch 1 ({pairs_per_model} (seed, image) pairs per model)")
    for model, init in (("lenet", "uniform"), ("lenet", "default"), ("cnn", "default")):
        config = ExperimentConfig(attack="ig", model=model, server_init=init)
        public = PublicKnowledge(
            model_name=model,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_outputs,
            batch_size=1,
            local_steps=1,
            learning_rate=0.1,
        )
        correct = 0
        for pair in range(pairs_per_model):
            seed, index = pair % 10, (pair * 7) % len(dataset.test_x)
            observation, _ = NoDefence().observe(
                public=public,
                server_model=server_model(config, dataset, seed),
                victim=ClientShard(0, dataset.test_x[index : index + 1], dataset.test_y[index : index + 1]),
            )
            correct += int(infer_labels(observation)[0]) == int(dataset.test_y[index])
        print(
            f"{model:6s} init={init:8s} {correct}/{pairs_per_model} = "
            f"{correct / pairs_per_model:.1%}  (target 100%)"
        )


def dlg_section(images: int) -> None:
    print(f"\n## DLG / iDLG on {images} single mnist-sample digits, sigmoid LeNet, U(-0.5, 0.5), float64")
    for attack in ("dlg", "idlg"):
        outcome = run_attack(prepare(ExperimentConfig(attack=attack, images=images, seed=0)))
        psnrs = [image.psnr for image in outcome.images]
        seconds = [r.seconds for r in outcome.rounds]
        restarts = [r.restarts_run for r in outcome.rounds]
        print(
            f"{attack:5s} PSNR>=40 dB: {outcome.leaked_fraction:.0%} (target >= 80%)"
            f"  median {statistics.median(psnrs):.1f} dB  min {min(psnrs):.1f}"
            f"  labels {outcome.label_accuracy:.0%}  seconds/image max {max(seconds):.1f}"
            f" median {statistics.median(seconds):.1f} (target <= 60)  restarts max {max(restarts)} (<= 8)"
            f"  baseline {outcome.median_baseline_psnr:.1f} dB"
        )


def init_section(images: int) -> None:
    print(f"\n## What the server's model choice does: iDLG on {images} digits, 2 restarts")
    for init, precision in (("uniform", "float64"), ("uniform", "float32"), ("default", "float64")):
        config = ExperimentConfig(
            attack="idlg", images=images, restarts=2, server_init=init, precision=precision
        )
        outcome = run_attack(prepare(config))
        psnrs = [image.psnr for image in outcome.images]
        print(
            f"init={init:8s} {precision}: median PSNR {outcome.median_psnr:.1f} dB "
            f"(min {min(psnrs):.1f}, max {max(psnrs):.1f}), PSNR>=40 dB {outcome.leaked_fraction:.0%}"
        )


def ig_section(images: int) -> None:
    print(
        f"\n## Inverting Gradients on {images} 32x32 colour crops (images), 1 step and a 5-step FedAvg update"
    )
    for model, steps in (("lenet", 1), ("cnn", 1), ("lenet", 5)):
        config = ExperimentConfig(
            attack="ig", dataset="images", model=model, images=images, local_steps=steps
        )
        outcome = run_attack(prepare(config))
        seconds = [r.seconds for r in outcome.rounds]
        print(
            f"{model:6s} local steps {steps}: median PSNR {outcome.median_psnr:.1f} dB (target >= 20), "
            f"median SSIM {outcome.median_ssim:.3f}, seconds/image max {max(seconds):.1f} "
            f"median {statistics.median(seconds):.1f} (target <= 30), "
            f"baseline {outcome.median_baseline_psnr:.1f} dB"
        )


def defences_section(
    images: int, attack: str, dataset: str, *, restarts: int, iterations: int | None
) -> None:
    print(
        f"\n## Defences: {attack} on {dataset}, {images} victims, {restarts} restart(s), "
        f"{iterations or 'default'} iterations: the `securefl attack compare` rows"
    )
    config = ExperimentConfig(
        attack=attack, dataset=dataset, images=images, restarts=restarts, iterations=iterations
    )
    outcomes = run_comparison(prepare(config))
    print(
        f"{'defence':16s} {'median PSNR':>11s} {'baseline':>9s} {'excess':>7s} {'SSIM':>6s} "
        f"{'labels':>6s} {'ε':>9s} {'s':>6s}"
    )
    for outcome in outcomes:
        excess = outcome.median_psnr - outcome.median_baseline_psnr
        epsilon = "-" if outcome.epsilon is None else f"{outcome.epsilon:.3g}"
        print(
            f"{outcome.defence_label:16s} {outcome.median_psnr:11.1f} {outcome.median_baseline_psnr:9.1f} "
            f"{excess:+7.1f} {outcome.median_ssim:6.3f} {outcome.label_accuracy:6.0%} {epsilon:>9s} "
            f"{outcome.seconds:6.0f}"
        )
    print("target: DP-SGD z=1 and SecAgg N>=16 excess <= +3 dB; clip alone well above +3 dB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", default=["labels", "dlg", "ig", "defences"])
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--ig-images", type=int, default=10)
    parser.add_argument("--init-images", type=int, default=6)
    parser.add_argument("--compare-images", type=int, default=4)
    parser.add_argument("--attack-for-defences", default="dlg")
    parser.add_argument("--dataset-for-defences", default="mnist-sample")
    parser.add_argument("--restarts-for-defences", type=int, default=2)
    parser.add_argument("--iterations-for-defences", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    for section in args.sections:
        if section == "labels":
            labels_section(args.pairs)
        elif section == "dlg":
            dlg_section(args.images)
        elif section == "init":
            init_section(args.init_images)
        elif section == "ig":
            ig_section(args.ig_images)
        elif section == "defences":
            defences_section(
                args.compare_images,
                args.attack_for_defences,
                args.dataset_for_defences,
                restarts=args.restarts_for_defences,
                iterations=args.iterations_for_defences,
            )
        else:
            parser.error(f"unknown section {section!r}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s, torch threads 1")


if __name__ == "__main__":
    main()
