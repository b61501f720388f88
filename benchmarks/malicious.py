"""The figures of issue 14, measured: a malicious server against secure aggregation, and the
client-side defences.  One thread; every figure printed with what it is.

Sections (all by default):

- ``imprint``: share of all clients' images recovered at >= 30 dB PSNR from one round's sum,
  batch 8 per client, N = 16, 64, 128, mnist-sample and the colour ``images`` crops; the pinned
  mlp's 64 bins through the real protocol at every N, the front block's bins through the real
  protocol at N = 16 and, scaled down for 2 cores, as the same clients' sum in the clear at
  N = 64 and 128 (``--secagg-up-to``); time per attack (the recovery) and per round.
- ``inconsistency``: the target's images through SecAgg (N = 16 and 64) against the same imprint
  model attacking one client without protection.
- ``defences``: every attack with the default client defences, ``--trials`` rounds each: refused
  or defeated share; consistency alone against model inconsistency, passive and active mode.
- ``honest``: ``--honest-rounds`` FedAvg rounds (8 clients, batch 8, one step) of the mlp on
  mnist-sample at each of ``--honest-lrs``, and at lr 0.1 of the cnn and of the mlp on images:
  every client puts the round's global model through the pin and the checks on its own batch;
  false refusals counted.
- ``cost``: the defences' client time over the client's round (training + its share of SecAgg),
  for the FedSGD rounds of the attacks and for ``securefl train``'s default client round.
- ``evasion``: weights hidden where the data never looks (random layer-1 weights on the pixels 0
  in every public image, large rows on switched-off layer-2 units), an adaptive imprint built to
  pass the data-aware checks (32 bins beside 32 scaled honest units), and noise of relative size rho
  on the bins' rows and the next layer: the checks on the target's batch against what the first
  layer still gives back (one client, and the sum of 16), beside an honest mlp.

    .venv/bin/python benchmarks/malicious.py [imprint|inconsistency|defences|honest|cost|evasion ...]
        [--trials T] [--honest-rounds R] [--honest-lrs 0.05,0.1,0.5,1.0] [--secagg-up-to N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch

from securefl.attacks.imprint import (
    MEASUREMENT_SCALE,
    MeasurementPrior,
    best_psnr,
    hide_where_the_data_never_looks,
    imprint_model,
    measurement_direction,
    recover,
    thresholds,
)
from securefl.attacks.malicious import ClientDefences, MaliciousConfig, prepare_malicious, run_malicious
from securefl.attacks.observation import Observation, ObservedKind, PublicKnowledge
from securefl.config import SecAggConfig
from securefl.data import load_dataset
from securefl.defences import checks
from securefl.defences.consistency import model_context
from securefl.defences.pinning import pin_for
from securefl.errors import ModelRefusedError
from securefl.fl.fedavg import weight_by_samples
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.fl.vectors import load_vector, to_vector
from securefl.models import build_model

OFF = ClientDefences(consistency=False, pinning=False, parameter_checks=False)


def _row(config: MaliciousConfig) -> None:
    outcome = run_malicious(prepare_malicious(config))
    trials = outcome.trials
    print(
        f"| {config.dataset} | {config.label} | {outcome.recovered_share:.1%} | "
        f"{statistics.mean(t.target_recovered for t in trials):.1%} | "
        f"{statistics.mean(t.candidates for t in trials):.0f} | "
        f"{statistics.mean(t.attack_seconds for t in trials):.3f} | "
        f"{statistics.mean(t.round_seconds for t in trials):.1f} |",
        flush=True,
    )


def _header() -> None:
    print(
        "| data | attack, aggregation, client defences | recovered (all / target's, mean) | target's "
        "| bins read | attack s | round s |"
    )
    print("|---|---|---|---|---|---|---|")


def imprint_section(trials: int, secagg_up_to: int) -> None:
    print(
        "\n## Imprint under secure aggregation, batch 8 per client "
        "(recovered = share of all clients' images >= 30 dB)"
    )
    _header()
    # The images set has 480 training crops: at batch 8 at most 60 clients.
    sizes = {"mnist-sample": (16, 64, 128), "images": (16, 48)}
    for dataset, client_counts in sizes.items():
        for clients in client_counts:
            rounds = max(1, min(trials, 480 // (clients * 8))) if dataset == "images" else trials
            _row(
                MaliciousConfig(
                    attack="imprint",
                    dataset=dataset,
                    placement="mlp",
                    clients=clients,
                    batch_size=8,
                    trials=rounds,
                    defences=OFF,
                )
            )
            for bins in (256, 1024, 4096) if dataset == "mnist-sample" else (256, 1024):
                _row(
                    MaliciousConfig(
                        attack="imprint",
                        dataset=dataset,
                        placement="front",
                        bins=bins,
                        clients=clients,
                        batch_size=8,
                        trials=rounds,
                        defences=OFF,
                        sum_in_clear=clients > secagg_up_to,
                    )
                )


def inconsistency_section(trials: int) -> None:
    print("\n## Model inconsistency: the target's 8 images (recovered = target's share >= 30 dB)")
    _header()
    for dataset in ("mnist-sample", "images"):
        for placement in ("mlp", "front"):
            bins = 64 if placement == "mlp" else 256
            _row(
                MaliciousConfig(
                    attack="imprint",
                    dataset=dataset,
                    placement=placement,
                    bins=bins,
                    clients=1,
                    secagg=False,
                    trials=trials,
                    defences=OFF,
                )
            )
            for clients in (16, 64):
                if dataset == "images" and clients * 8 * trials > 480:
                    continue
                _row(
                    MaliciousConfig(
                        attack="inconsistency",
                        dataset=dataset,
                        placement=placement,
                        bins=bins,
                        clients=clients,
                        trials=trials,
                        defences=OFF,
                    )
                )


def defences_section(trials: int) -> None:
    print(f"\n## With the client defences ({trials} rounds each, N = 16, batch 8)")
    print("| attack | defences | target refused | defeated (nothing >= 30 dB) | recovered |")
    print("|---|---|---|---|---|")
    consistency = ClientDefences(consistency=True, pinning=False, parameter_checks=False)
    cases = [
        ("imprint", "front", False, ClientDefences()),
        ("imprint", "mlp", False, ClientDefences()),
        ("inconsistency", "front", False, ClientDefences()),
        ("inconsistency", "mlp", False, ClientDefences()),
        ("inconsistency", "mlp", False, consistency),
        ("inconsistency", "mlp", True, consistency),
        ("inconsistency", "front", False, consistency),
    ]
    for attack, placement, active, defences in cases:
        config = MaliciousConfig(
            attack=attack,
            placement=placement,
            bins=64 if placement == "mlp" else 256,
            clients=16,
            trials=trials,
            active=active,
            defences=defences,
        )
        outcome = run_malicious(prepare_malicious(config))
        print(
            f"| {config.label} | {defences.label} | {outcome.refused_share:.0%} | "
            f"{outcome.defeated_share:.0%} | "
            f"{outcome.recovered_share:.1%} |",
            flush=True,
        )


def honest_section(rounds: int, learning_rates: tuple[float, ...]) -> None:
    print(
        f"\n## Honest FedAvg rounds: false refusals ({rounds} rounds each, 8 clients x batch 8, one step; "
        "every client checks the global model on its own batch)"
    )
    print(
        "| data | model | lr | client checks | refused | largest rank-one share on the data "
        "| largest dead-unit share on the data | final train loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    cases = [("mnist-sample", "mlp", lr) for lr in learning_rates]
    cases += [("mnist-sample", "cnn", 0.1), ("images", "mlp", 0.1)]
    for dataset_name, model_name, lr in cases:
        dataset = load_dataset(dataset_name)
        model = build_model(
            model_name, input_shape=dataset.input_shape, num_outputs=dataset.num_outputs, seed=0
        )
        pin = pin_for(model_name, input_shape=dataset.input_shape, num_outputs=dataset.num_outputs)
        trainer = LocalSGDTrainer(
            model=build_model(model_name, input_shape=dataset.input_shape, num_outputs=dataset.num_outputs),
            task="classification",
            local_epochs=1,
            batch_size=None,
            lr=lr,
        )
        generator = torch.Generator().manual_seed(0)
        refused, rank_one, dead, loss = 0, 0.0, 0.0, float("nan")
        for round_index in range(rounds):
            global_params = to_vector(model.parameters())
            updates = []
            for client in range(8):
                rows = torch.randint(len(dataset.train_x), (8,), generator=generator)
                shard = ClientShard(client, dataset.train_x[rows], dataset.train_y[rows])
                try:
                    pin.check(model)
                    checks.check(model, data=shard.x)
                except ModelRefusedError:
                    refused += 1
                hidden = checks.layer_io(model, shard.x)[:-1]
                rank_one = max(
                    [rank_one]
                    + [checks.rank_one_share_on(layer.weight, i, o) or 0.0 for _, layer, i, o in hidden]
                )
                dead = max([dead] + [checks.dead_unit_share_on(o) for *_, o in hidden])
                updates.append(
                    trainer.train(
                        global_params=global_params, shard=shard, round_index=round_index, generator=generator
                    )
                )
            loss = statistics.mean(u.train_loss for u in updates)
            load_vector(model.parameters(), global_params + torch.stack([u.delta for u in updates]).mean(0))
        print(
            f"| {dataset_name} | {model_name} | {lr} | {8 * rounds} | {refused} | {rank_one:.3f} "
            f"| {dead:.3f} "
            f"| {loss:.3f} |",
            flush=True,
        )


def cost_section(repeats: int = 5) -> None:
    """The defences' client time against the client's whole round: training plus its share of the
    secure-aggregation round (medians of ``repeats``; the pin is built once, from the config)."""
    print("\n## Cost of the client defences per round (medians of 5; SecAgg over 10 clients, complete graph)")
    print(
        "| client round | model (parameters) | defences ms | training s | SecAgg s per client "
        "| defences / round |"
    )
    print("|---|---|---|---|---|---|")
    dataset = load_dataset("mnist-sample")
    settings = {"round": 0, "lr": 0.05, "local_steps": 2, "batch_size": 16}
    default_round = "`securefl train` default: 400 images, 2 epochs, batch 16"
    cases = (
        ("FedSGD, 8 images (the attacks' round)", "mlp", 8, 1, None),
        ("FedSGD, 8 images (the attacks' round)", "cnn", 8, 1, None),
        (default_round, "mlp", 400, 2, 16),
        (default_round, "cnn", 400, 2, 16),
    )
    for label, model_name, samples, epochs, batch in cases:
        shape, outputs = dataset.input_shape, dataset.num_outputs
        model = build_model(model_name, input_shape=shape, num_outputs=outputs, seed=0)
        pin = pin_for(model_name, input_shape=shape, num_outputs=outputs)
        global_params = to_vector(model.parameters())
        trainer = LocalSGDTrainer(
            model=model, task="classification", local_epochs=epochs, batch_size=batch, lr=0.05
        )
        defence, training, secagg = [], [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            pin.check(model)
            checks.check(model, data=dataset.train_x[: batch or samples])  # on one batch
            context = model_context(model=model, settings=settings)
            defence.append(time.perf_counter() - started)
            contributions = []
            for client in range(10):
                rows = torch.arange(client * samples, (client + 1) * samples) % len(dataset.train_x)
                shard = ClientShard(client, dataset.train_x[rows], dataset.train_y[rows])
                started = time.perf_counter()
                update = trainer.train(
                    global_params=global_params,
                    shard=shard,
                    round_index=0,
                    generator=torch.Generator().manual_seed(repeat),
                )
                if client == 0:
                    training.append(time.perf_counter() - started)
                contributions.append(weight_by_samples(update))
            channel = SecureAggregationChannel(
                config=SecAggConfig(),
                num_params=global_params.numel(),
                weight_bound=samples,
                clients_per_round=10,
                seed=repeat,
            )
            started = time.perf_counter()
            channel.aggregate(contributions, round_index=repeat, contexts=dict.fromkeys(range(10), context))
            secagg.append((time.perf_counter() - started) / 10)
        d, t, a = (statistics.median(v) for v in (defence, training, secagg))
        print(
            f"| {label} | {model_name} ({global_params.numel()}) | {1e3 * d:.2f} | {t:.3f} | {a:.3f} | "
            f"{d / (d + t + a):.2%} |",
            flush=True,
        )


def _unit_candidates(observation: Observation, layout) -> torch.Tensor:
    """Every way the first layer gives an image back: the imprint's adjacent differences, and
    each unit's own ratio ∂L/∂W_i / ∂L/∂b_i (exact for a unit only one image switched on;
    Phong et al. 2017)."""
    features = math.prod(layout.input_shape)
    update = observation.observed_update
    weight = update[layout.weight_offset : layout.weight_offset + layout.bins * features].view(
        layout.bins, -1
    )
    bias = update[layout.bias_offset : layout.bias_offset + layout.bins]
    alive = bias.abs() > 1e-6 * float(bias.abs().max())
    ratios = (weight[alive] / bias[alive, None]).clamp(0, 1).view(-1, *layout.input_shape).float()
    return torch.cat([recover(observation, layout), ratios])


def _first_layer_round(model, layout, shards, dataset) -> list[float]:
    """One FedSGD round of ``shards`` on ``model`` (mean of the updates, as SecAgg would give):
    the best PSNR of any first-layer candidate against every image."""
    params = to_vector(model.parameters())
    trainer = LocalSGDTrainer(model=model, task="classification", local_epochs=1, batch_size=None, lr=0.1)
    deltas = [
        trainer.train(global_params=params, shard=shard, round_index=0, generator=torch.Generator()).delta
        for shard in shards
    ]
    observation = Observation(
        model_parameters=params,
        observed_update=-torch.stack(deltas).mean(0),
        kind=ObservedKind.AGGREGATE if len(shards) > 1 else ObservedKind.CLIENT_UPDATE,
        public=PublicKnowledge(
            model_name="mlp",
            input_shape=dataset.input_shape,
            num_classes=10,
            batch_size=8,
            local_steps=1,
            learning_rate=0.1,
            num_clients=len(shards),
        ),
    )
    load_vector(model.parameters(), params)
    candidates = _unit_candidates(observation, layout)
    images = torch.cat([shard.x for shard in shards])
    return [float(p) for p in best_psnr(candidates, images)]


def evasion_section(trials: int) -> None:
    print(
        "\n## Evasion (pinned mlp, 64 bins; first-layer candidates: imprint differences and single-unit "
        "ratios). 'hidden': random layer-1 weights on the pixels 0 in every image and large rows on "
        "switched-off layer-2 units (evaded the checks over the input cube); 'adaptive': 32 bins beside "
        "32 scaled honest units, honest-looking columns after them; 'rho': noise of relative "
        "size rho on the bins' rows and on the next layer. Checks on the target's own batch of 8."
    )
    print(
        "| model | rank-one share of the bins' layer on the data | target refuses | any of 16 refuses "
        "| recovered, 1 client x 8 "
        "| recovered, sum of 16 x 8 |"
    )
    print("|---|---|---|---|---|---|")
    dataset = load_dataset("mnist-sample")
    direction = measurement_direction(dataset.input_shape, seed=0)
    prior = MeasurementPrior.fit(dataset.test_x, direction)
    # What the attacker can know without any client's data: the pixels 0 in every public image.
    unused = (dataset.test_x.flatten(1).abs().max(0).values == 0).float()
    for rho in ("honest", "hidden", "adaptive", 0.0, 0.3, 1.0, 2.0, 4.0):
        shares, flagged, everyone_flagged, alone, summed = [], 0, 0, [], []
        for trial in range(trials):
            model, layout = imprint_model(
                placement="mlp",
                base_model="mlp",
                input_shape=dataset.input_shape,
                num_outputs=dataset.num_outputs,
                bins=64,
                direction=direction,
                prior=prior,
                seed=trial,
            )
            if rho == "honest":
                model = build_model("mlp", input_shape=dataset.input_shape, num_outputs=10, seed=trial)
            elif rho == "adaptive":
                # Half the first layer are bins (32 cuts), half honest rows scaled by 0.1; the next
                # layer keeps the equal columns on the bins and honest columns scaled by 300 on the
                # rest (scales picked on a 3-round grid; public data only).
                honest = build_model(
                    "mlp", input_shape=dataset.input_shape, num_outputs=10, seed=1000 + trial
                )
                first, second = model.net[1], model.net[3]
                with torch.no_grad():
                    first.bias[:32] = -MEASUREMENT_SCALE * thresholds(prior, 32)
                    first.weight[32:] = 0.1 * honest.net[1].weight[32:]
                    first.bias[32:] = 0.1 * honest.net[1].bias[32:]
                    second.weight[:, 32:] = 300 * honest.net[3].weight[:, 32:]
                layout = dataclasses.replace(layout, bins=32)
            elif rho == "hidden":
                hide_where_the_data_never_looks(
                    model, unused_inputs=unused, generator=torch.Generator().manual_seed(trial)
                )
            else:
                generator = torch.Generator().manual_seed(trial)
                with torch.no_grad():
                    for weight in (model.net[1].weight, model.net[3].weight):
                        noise = torch.randn(weight.shape, generator=generator)
                        weight.add_(rho * weight.norm(dim=1, keepdim=True) * noise / weight.shape[1] ** 0.5)
            shards = [
                ClientShard(c, dataset.train_x[rows], dataset.train_y[rows])
                for c, rows in enumerate(torch.arange(trial * 128, (trial + 1) * 128).split(8))
            ]
            (_, first, inputs, outputs), *_ = checks.layer_io(model, shards[0].x)
            shares.append(checks.rank_one_share_on(first.weight, inputs, outputs) or 0.0)
            flagged += bool(checks.inspect(model, data=shards[0].x))
            everyone_flagged += any(checks.inspect(model, data=shard.x) for shard in shards)
            alone.append(
                statistics.mean(p >= 30 for p in _first_layer_round(model, layout, shards[:1], dataset))
            )
            summed.append(
                statistics.mean(p >= 30 for p in _first_layer_round(model, layout, shards, dataset))
            )
        print(
            f"| {rho if isinstance(rho, str) else f'rho = {rho}'} | "
            f"{statistics.mean(shares):.3f} | {flagged}/{trials} | {everyone_flagged}/{trials} "
            f"| {statistics.mean(alone):.0%} "
            f"| {statistics.mean(summed):.1%} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "sections", nargs="*", default=["imprint", "inconsistency", "defences", "honest", "cost", "evasion"]
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--honest-rounds", type=int, default=1000)
    parser.add_argument(
        "--honest-lrs",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        default=(0.05, 0.1, 0.5, 1.0),
    )
    parser.add_argument("--secagg-up-to", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    for section in args.sections:
        if section == "imprint":
            imprint_section(args.trials, args.secagg_up_to)
        elif section == "inconsistency":
            inconsistency_section(args.trials)
        elif section == "defences":
            defences_section(max(args.trials, 20))
        elif section == "honest":
            honest_section(args.honest_rounds, args.honest_lrs)
        elif section == "cost":
            cost_section()
        elif section == "evasion":
            evasion_section(max(args.trials, 10))
        else:
            raise SystemExit(f"unknown section {section!r}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
