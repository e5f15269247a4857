"""The seeds a training applies are the seeds its record names: pinned where they are used.

Inside DataLoader workers (torch's, NumPy's and Python's generators as a worker finds them),
in the loader's generator, in the sampler's order and in the training process itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from train_fixtures import small_params

from reprodl.training.loop import EpochSampler, make_loader
from reprodl.training.seeding import SeedPlan

pytest_plugins = ["train_fixtures"]


def _generator_state() -> dict[str, Any]:
    """torch's seed and the head of NumPy's and Python's states, as this process has them now."""
    return {
        "torch": torch.initial_seed(),
        "numpy": [int(v) for v in np.random.get_state()[1][:4]],
        "python": list(random.getstate()[1][:4]),
    }


def _seeded_state(seed: int) -> dict[str, Any]:
    """What :func:`_generator_state` reads right after seeding all three with ``seed``."""
    return {
        "torch": seed,
        "numpy": [int(v) for v in np.random.RandomState(seed).get_state()[1][:4]],
        "python": list(random.Random(seed).getstate()[1][:4]),
    }


class _WhoAmI(torch.utils.data.Dataset):
    """Each item is (worker id, torch seed, NumPy and Python state heads) as the worker has them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        info = torch.utils.data.get_worker_info()
        state = _generator_state()
        row = [info.id if info else -1, state["torch"], *state["numpy"], *state["python"]]
        return torch.tensor(row, dtype=torch.int64), 0


def test_the_plan_derives_every_seed_from_the_base_seed():
    plan = SeedPlan(7, num_workers=2)
    assert (plan.python, plan.numpy, plan.torch, plan.sampler, plan.dataloader_generator) == (7, 7, 7, 8, 8)
    assert plan.worker_seeds == [1008, 1009]
    assert plan.record().model_dump() == {
        "seed": 7,
        "python": 7,
        "numpy": 7,
        "torch": 7,
        "dataloader_generator": 8,
        "sampler": 8,
        "worker_seeds": [1008, 1009],
    }
    # Python's and NumPy's seeders take 32 bits: a negative or huge seed is masked for them only.
    big = SeedPlan(-1, num_workers=1)
    assert (big.python, big.numpy, big.torch, big.worker(0)) == (0xFFFFFFFF, 0xFFFFFFFF, -1, 1000)


def test_every_worker_runs_with_the_seeds_the_record_names():
    plan = SeedPlan(7, num_workers=2)
    loader, _ = make_loader(_WhoAmI(), 1, seeds=plan, shuffle=False, device=torch.device("cpu"))
    rows = torch.cat([x for x, _ in loader]).tolist()
    recorded = plan.record().worker_seeds
    seen = {}
    for row in rows:
        worker, seed, numpy_head, python_head = row[0], row[1], row[2:6], row[6:10]
        seen[worker] = {"torch": seed, "numpy": numpy_head, "python": python_head}
    assert sorted(seen) == [0, 1]
    for worker, state in seen.items():
        assert state == _seeded_state(recorded[worker])
    assert [seen[0]["torch"], seen[1]["torch"]] == [1008, 1009]


def test_the_loader_generator_and_the_data_order_use_the_recorded_seeds():
    plan = SeedPlan(7)
    loader, sampler = make_loader(_WhoAmI(), 2, seeds=plan, shuffle=True, device=torch.device("cpu"))
    record = plan.record()
    assert loader.generator is not None and loader.generator.initial_seed() == record.dataloader_generator == 8
    assert loader.worker_init_fn is None  # no workers, nothing to seed
    orders = EpochSampler(10, 4, seeds=plan, shuffle=True)
    assert orders.order().tolist() == [5, 4, 7, 1, 8, 0, 9, 6, 2, 3]
    orders.set_epoch(1)
    g = torch.Generator()
    g.manual_seed(record.sampler * 1_000_003 + 1)
    assert orders.order().tolist() == torch.randperm(10, generator=g).tolist() == [5, 7, 9, 8, 0, 4, 3, 6, 1, 2]


class _RecordWorkerSeeds:
    """A transform that writes, once per worker, the generator states the worker started with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        path = self.folder / f"worker{info.id if info else 'main'}.json"
        if not path.exists():
            path.write_text(json.dumps(_generator_state()))
        return x


class _RecordingLoss(torch.nn.NLLLoss):
    """NLLLoss that notes the training process's generator states at its first call."""

    first_state: dict[str, Any] | None = None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if _RecordingLoss.first_state is None:
            _RecordingLoss.first_state = _generator_state()
        return super().forward(input, target)


def test_a_training_applies_exactly_the_seeds_it_records(digits_split_master, tmp_path):
    from reprodl import DerivedDataSet, GenNet, TensorDataSet, train_model_with_metadata_capture

    states = tmp_path / "states"
    states.mkdir()
    train_ds = TensorDataSet(digits_split_master, "train", _RecordWorkerSeeds(states))
    params = small_params(num_workers=2, seed=11)
    torch.manual_seed(params.seed)
    net = GenNet(**params.init_params)
    opt = torch.optim.SGD(net.parameters(), lr=params.learning_rate)
    _RecordingLoss.first_state = None
    with DerivedDataSet(str(tmp_path), "seeded", train_ds) as out:
        record = train_model_with_metadata_capture(net, train_ds, opt, _RecordingLoss(), params, out, progress=False)
    seeds = record.training.seeds
    assert seeds.worker_seeds == [1012, 1013] and seeds.sampler == seeds.dataloader_generator == 12
    workers = {p.stem: json.loads(p.read_text()) for p in states.iterdir()}
    assert sorted(workers) == ["worker0", "worker1"]
    for i, seed in enumerate(seeds.worker_seeds):
        assert workers[f"worker{i}"] == _seeded_state(seed)
    # In the training process: the record's global seeds, applied just before the first step.
    main = _RecordingLoss.first_state
    assert main is not None and main["torch"] == seeds.torch == 11
    assert main["numpy"] == _seeded_state(seeds.numpy)["numpy"]
    assert main["python"] == _seeded_state(seeds.python)["python"]
    order = EpochSampler(len(train_ds), params.batch_size, seeds=SeedPlan(seeds.seed), shuffle=True)
    order.set_epoch(0)
    list(order)
    assert record.training.data_order_digests == [order.order_digest]


def test_records_without_a_sampler_seed_still_read():
    from reprodl.provenance import Seeds

    old = Seeds.model_validate(
        {"seed": 0, "python": 0, "numpy": 0, "torch": 0, "dataloader_generator": 1, "worker_seeds": [1000]}
    )
    assert old.sampler is None and old.worker_seeds == [1000]
