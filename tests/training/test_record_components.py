"""Every component named, what each step applied, and the script's settings kept (issue 18, items 2-4).

The watchers of reprodl.training.components, through ``run.watch`` and the recorded steps.

Training scripts of our own, in the shapes public training code has, on tiny in-memory data:

- a GAN: two models, two optimisers, two ``run.watch`` calls, ``run.save({"generator": G,
  "discriminator": D})``, re-executed by ``reprodl reproduce --trust-code`` (a subprocess in a
  git repository);
- a language model updated by hand (``p.data.add_(p.grad, alpha=-lr)``, lr divided by 4);
- a nanoGPT-like loop: gradient accumulation, bf16 autocast on the CPU, an lr set by hand every
  step, ``clip_grad_norm_``;
- a closure optimiser (LBFGS); a ``torch.compile``'d model; Lightning's manual optimisation with
  two optimisers; a Lightning Fabric loop watched after ``fabric.setup`` (its wrappers);
- a script's TF32 and ``cudnn.benchmark`` settings.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from user_scripts import run_script, user_repo

import reprodl
from reprodl.errors import ModelLoadError, UnsafeImportError
from reprodl.modeldataset.read import load_record, load_trace, load_weights
from reprodl.modeldataset.verify import verify_model
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.store import open_dataset
from reprodl.training.capture import DeterminismWarning

pytest_plugins = ["train_fixtures"]

GAN = """\
import torch
import torch.nn as nn

import reprodl

torch.backends.cuda.matmul.allow_tf32 = True  # the script's own setting: kept, and recorded as the script made it


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def main():
    real_data = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0
    with reprodl.start_run("models", "gan", seed=3) as run:
        G, D = Generator(), Discriminator()
        opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
        criterion = nn.BCEWithLogitsLoss()
        run.watch(G, opt_g)
        run.watch(D, opt_d, loss=criterion)
        loader = run.loader(torch.utils.data.TensorDataset(real_data), batch_size=16, shuffle=True)
        for epoch in range(1, 3):
            for (real,) in loader:
                ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
                D.zero_grad()
                loss_real = criterion(D(real), ones)
                loss_real.backward()
                fake = G(torch.randn(len(real), 2))
                loss_fake = criterion(D(fake.detach()), zeros)
                loss_fake.backward()
                opt_d.step()
                G.zero_grad()
                loss_g = criterion(D(fake), ones)
                loss_g.backward()
                opt_g.step()
            run.log(epoch=epoch, loss_d=(loss_real + loss_fake).item(), loss_g=loss_g.item())
        run.save({"generator": G, "discriminator": D})
    print(run.uri)


if __name__ == "__main__":
    main()
"""

GAN_STEPS = 2 * 4  # two epochs of 64 samples in batches of 16, per optimiser


@pytest.fixture(scope="module")
def gan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo = user_repo(tmp_path_factory.mktemp("gan") / "repo", {"gan.py": GAN}, commit_message="a GAN")
    (repo / "models").mkdir()
    res = run_script(repo, "gan.py")
    assert res.returncode == 0, res.stderr
    uri = res.stdout.strip().splitlines()[-1]
    return {"repo": repo, "uri": uri, "record": load_record(uri)}


def test_a_gan_records_both_models_and_both_optimisers_by_name(gan: dict[str, Any]) -> None:
    record = gan["record"]
    models = {m.name: m for m in record.models}
    assert list(models) == ["generator", "discriminator"]
    assert [models[n].architecture.class_name for n in models] == ["Generator", "Discriminator"]
    assert record.architecture == models["generator"].architecture  # the default model, as before
    assert [(o.name, o.model, o.class_name, o.steps) for o in record.training.optimizers] == [
        ("generator", "generator", "Adam", GAN_STEPS),
        ("discriminator", "discriminator", "Adam", GAN_STEPS),
    ]
    assert record.training.optimizer_steps == 2 * GAN_STEPS
    assert record.results.trace is not None and record.results.trace.n_steps == 2 * GAN_STEPS
    assert models["discriminator"].loss is not None and models["discriminator"].loss.class_name == "BCEWithLogitsLoss"
    # D's step learns from two backward passes (real, fake); G's from one.
    assert [c.values for c in models["discriminator"].accumulation] == [{"backward_passes": 2}]
    assert [c.values for c in models["generator"].accumulation] == [{"backward_passes": 1}]
    assert record.training.batch_size == 16


def test_both_gan_weights_are_saved_and_the_discriminator_loads_by_name(gan: dict[str, Any]) -> None:
    record, ds = gan["record"], open_dataset(gan["uri"])
    generator, discriminator = record.models
    assert (generator.weights_file, discriminator.weights_file) == (
        "model.safetensors",
        "models/discriminator.safetensors",
    )
    assert generator.weights_sha256 == record.results.weights_sha256
    g_state = load_weights(ds, record)
    d_state = load_weights(ds, record, model="discriminator")
    assert state_dict_sha256(d_state) == discriminator.weights_sha256 != generator.weights_sha256
    assert d_state["net.0.weight"].shape == (8, 4) and g_state["net.0.weight"].shape == (8, 2)

    # The script's classes are never rebuilt from the stored script: the user passes their own copy.
    classes: dict[str, Any] = {}
    exec(_class_defs(GAN), classes)
    model = reprodl.TrainedTorchModel(gan["uri"], model="discriminator", model_class=classes["Discriminator"])
    assert type(model.model).__name__ == "Discriminator"
    assert state_dict_sha256(model.model.state_dict()) == discriminator.weights_sha256
    generator_model = reprodl.TrainedTorchModel(gan["uri"], model_class=classes["Generator"]).model
    assert state_dict_sha256(generator_model.state_dict()) == generator.weights_sha256
    with pytest.raises(ModelLoadError, match="no model named 'critic'.*'generator', 'discriminator'"):
        reprodl.TrainedTorchModel(gan["uri"], model="critic", model_class=classes["Generator"])
    with pytest.raises(UnsafeImportError, match="never imported from a record"):
        reprodl.TrainedTorchModel(gan["uri"], model="discriminator", allow=["__main__"])


def _class_defs(script: str) -> str:
    """The imports and class definitions of a test script (up to its first top-level statement after them)."""
    import ast

    tree = ast.parse(script)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef))]
    return "\n".join(ast.get_source_segment(script, n) or "" for n in keep)


def test_a_gan_reproduces_identically_with_no_environment_differences(gan: dict[str, Any], cli: Any) -> None:
    result = cli("reproduce", gan["uri"], "--trust-code", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "identical", report["reasons"]
    # The original's record against the re-run's own: the script's TF32 setting is no difference.
    assert report["environment_differences"] == []
    assert gan["record"].training.determinism.tf32_matmul is True


# --- a language model updated by hand ----------------------------------------------------------
class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encoder(x))
        return self.decoder(out)


def _tokens(n: int = 48, length: int = 6, vocab: int = 11) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, vocab, (n, length + 1), generator=g)
    return torch.utils.data.TensorDataset(stream[:, :-1], stream[:, 1:])


def _base(tmp_path: Path) -> str:
    base = tmp_path / "models"
    base.mkdir(exist_ok=True)
    return str(base)


def test_a_model_updated_by_hand_is_traced_per_backward_pass(tmp_path: Path) -> None:
    lr, epochs = 0.5, 3
    with reprodl.start_run(_base(tmp_path), "lm", seed=1) as run:
        model = TinyLM()
        run.watch(model)  # no optimiser: the script updates the weights itself
        loader = run.loader(_tokens(), batch_size=8, shuffle=True)
        fingerprints = []
        for epoch in range(1, epochs + 1):
            for x, y in loader:
                model.zero_grad()
                loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
                fingerprints.append(float(model.decoder.bias.detach().sum()))
            run.log(epoch=epoch, train_loss=loss.item())
            lr /= 4
        run.save(model)
    record = run.record
    assert record is not None
    steps = epochs * 6  # 48 samples in batches of 8
    (lm,) = record.models
    assert (lm.name, lm.optimizers, lm.steps, record.training.optimizers) == ("TinyLM", [], steps, [])
    assert record.training.optimizer_steps == steps and record.training.batch_size == 8
    assert record.training.optimizer.class_name == "(none: updated by hand)"
    assert record.results.trace is not None and record.results.trace.n_steps == steps
    rows = load_trace(open_dataset(str(run.uri)), record)
    assert rows is not None and len(rows) == steps
    assert len({tuple(r) for r in rows["digest"].tolist()}) == steps  # after each update: every step differs
    assert [c.values for c in lm.clipping] == [{"function": "clip_grad_norm_", "max_norm": 0.25, "norm_type": 2.0}]
    # no run.loader: the first step's operations are logged from the model's first forward pass
    assert record.results.trace.oplog and [o.step for o in record.results.trace.oplog] == [1]
    assert record.results.trace.oplog[0].n_ops > 10


# --- a nanoGPT-like loop -----------------------------------------------------------------------
def _lr(it: int) -> float:
    """Warm up for 2 steps, hold for 2, then decay: the lr nanoGPT's loop sets by hand each step."""
    if it < 2:
        return 1e-3 * (it + 1) / 2
    if it < 4:
        return 1e-3
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 4) / 4)) * (1e-3 - 1e-4)


def test_an_accumulating_autocast_loop_records_the_lr_as_applied_and_what_it_did(tmp_path: Path) -> None:
    iters, micro = 8, 4
    data = _tokens(n=64)
    with reprodl.start_run(_base(tmp_path), "gpt", seed=2) as run:
        run.use(data.tensors[0])
        model = TinyLM()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
        run.watch(model, optimizer, batch_size=4)
        g = torch.Generator().manual_seed(0)
        for it in range(iters):
            for group in optimizer.param_groups:
                group["lr"] = _lr(it)
            for _ in range(micro):
                ix = torch.randint(0, len(data), (4,), generator=g)
                x, y = data.tensors[0][ix], data.tensors[1][ix]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()) / micro
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.log(step=iters, train_loss=loss.item() * micro)
        run.save(model)
    record = run.record
    assert record is not None
    (opt,) = record.training.optimizers
    applied = [(c.step, c.values["lr"]) for c in opt.applied if "lr" in c.values]
    expected = [(it + 1, _lr(it)) for it in range(iters) if it == 0 or _lr(it) != _lr(it - 1)]
    assert applied == expected and len(applied) < iters  # the lr as applied, changes only
    assert opt.applied[0].values["betas"] == [0.9, 0.95] and opt.applied[0].values["weight_decay"] == 0.1
    assert record.training.optimizer.param_groups[0]["lr"] == 1e-3  # as constructed, still there
    (gpt,) = record.models
    assert [(c.step, c.values) for c in gpt.accumulation] == [(1, {"backward_passes": micro})]
    assert [(c.step, c.values) for c in gpt.autocast] == [
        (1, {"enabled": True, "device_type": "cpu", "dtype": "torch.bfloat16"})
    ]
    assert [(c.step, c.values) for c in gpt.clipping] == [
        (1, {"function": "clip_grad_norm_", "max_norm": 1.0, "norm_type": 2.0})
    ]
    assert record.training.batch_size == 4 and record.training.optimizer_steps == iters
    assert torch.nn.utils.clip_grad_norm_.__module__ == "torch.nn.utils.clip_grad"  # torch's own again


def test_a_closure_optimiser_is_recorded_with_each_step(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    with reprodl.start_run(_base(tmp_path), "lbfgs", seed=0) as run:
        run.use(x)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
        run.watch(model, optimizer, name="regression", batch_size=32)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x).squeeze(1), y)
            loss.backward()
            return loss

        for _ in range(3):
            optimizer.step(closure)
        run.save(model)
    record = run.record
    assert record is not None
    (opt,) = record.training.optimizers
    assert (opt.name, opt.class_name, opt.closure, opt.steps) == ("regression", "LBFGS", True, 3)
    assert record.models[0].name == "regression" and record.training.optimizer_steps == 3
    assert record.results.trace is not None and record.results.trace.n_steps == 3
    assert record.results.trace.oplog and record.results.trace.oplog[0].step == 1  # from the closure's forward


@pytest.mark.slow  # importing torch's compiler stack takes a while on a busy machine
def test_a_compiled_model_is_recorded_by_its_original_class_and_weight_names(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model = torch.compile(net, backend="eager")  # dynamo's wrapper, without a C compiler
    assert type(model).__name__ == "OptimizedModule"
    run = _train_two_steps(tmp_path, "compiled", model)
    record = run.record
    assert record is not None
    (component,) = record.models
    assert (component.architecture.class_name, component.compiled) == ("Sequential", True)
    assert record.results.trace is not None and record.results.trace.tensors == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]
    state = load_weights(open_dataset(str(run.uri)), record)
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert record.training.optimizer_steps == 2


def _train_two_steps(tmp_path: Path, name: str, model: nn.Module) -> Any:
    """Two SGD steps of ``model`` (a wrapped one watched and saved as the wrapper); the run."""
    with reprodl.start_run(_base(tmp_path), name, seed=0) as run:
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        run.use(x)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, batch_size=16)
        for _ in range(2):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
        run.save(model)
    return run


def test_a_data_parallel_model_is_recorded_by_the_module_inside(tmp_path: Path) -> None:
    model = nn.DataParallel(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))  # no GPU: runs the module
    run = _train_two_steps(tmp_path, "data-parallel", model)
    record = run.record
    assert record is not None
    (component,) = record.models
    assert (component.architecture.class_name, component.name, component.steps) == ("Sequential", "Sequential", 2)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert record.results.trace is not None and record.results.trace.tensors == names
    assert sorted(load_weights(open_dataset(str(run.uri)), record)) == sorted(names)


# --- Lightning's manual optimisation -------------------------------------------------------------
def test_lightning_manual_optimisation_records_every_optimiser_and_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L = pytest.importorskip("lightning", reason="Lightning is not installed: pip install 'reprodl[lightning]'")
    from reprodl.integrations.lightning import ReprodlCallback

    class ManualGAN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.generator = nn.Linear(2, 4)
            self.discriminator = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            (real,) = batch
            opt_g, opt_d = self.optimizers()
            bce = nn.functional.binary_cross_entropy_with_logits
            fake = self.generator(torch.randn(len(real), 2))
            d_loss = bce(self.discriminator(real), torch.ones(len(real), 1)) + bce(
                self.discriminator(fake.detach()), torch.zeros(len(real), 1)
            )
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            g_loss = bce(self.discriminator(fake), torch.ones(len(real), 1))
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            return [
                torch.optim.Adam(self.generator.parameters(), lr=1e-3),
                torch.optim.SGD(self.discriminator.parameters(), lr=1e-2),
            ]

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    L.seed_everything(0, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(0)))
    callback = ReprodlCallback(str(tmp_path), "manual-gan")
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeterminismWarning)
        trainer.fit(ManualGAN(), torch.utils.data.DataLoader(data, batch_size=8))
    record = callback.record
    assert record is not None
    batches = 2 * 4
    assert [(o.name, o.class_name, o.steps) for o in record.training.optimizers] == [
        ("ManualGAN_0", "Adam", batches),
        ("ManualGAN_1", "SGD", batches),
    ]
    assert record.training.optimizer_steps == 2 * batches
    assert record.results.trace is not None and record.results.trace.n_steps == 2 * batches
    # each step's epoch, batch and inputs are traced, and the first step's operations logged (as run.loader's are)
    rows = load_trace(open_dataset(str(callback.uri)), record)
    assert rows is not None
    assert [(int(r["epoch"]), int(r["batch"])) for r in rows[:3]] == [(1, 1), (1, 1), (1, 2)]
    # a batch's inputs go to the first step after it (the discriminator's); the generator's step learnt from none
    assert (rows["inputs"][0::2] != 0).all() and (rows["inputs"][1::2] == 0).all()
    assert rows["inputs"][0::2].tolist() == 2 * rows["inputs"][0:8:2].tolist()  # unshuffled: epoch 2's batches again
    assert len(set(rows["inputs"][0::2].tolist())) == batches // 2
    assert record.results.trace.oplog and record.results.trace.oplog[0].step == 1


# --- Lightning Fabric: run.watch given what fabric.setup returned ----------------------------------
class FabricNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _fabric_run(tmp_path: Path, name: str, *, precision: str = "32-true") -> Any:
    """Fabric's example loop (fabric.setup, setup_dataloaders, fabric.backward) on 32 samples in batches of 8,
    2 epochs, the lr halved after the first; run.watch given the wrapped model and optimiser (those the loop uses)."""
    fabric_module = pytest.importorskip("lightning.fabric", reason="Lightning is not installed")
    fabric = fabric_module.Fabric(accelerator="cpu", devices=1, precision=precision)
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)
    )
    with reprodl.start_run(_base(tmp_path), name, seed=0) as run:
        net = FabricNet()
        model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        loader = fabric.setup_dataloaders(run.loader(data, batch_size=8, shuffle=True))
        assert type(model).__name__ == "_FabricModule" and type(optimizer).__name__ == "FabricSGD"
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # on Fabric's optimiser
        run.watch(model, optimizer, scheduler=scheduler)
        for epoch in range(1, 3):
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                fabric.backward(loss)
                optimizer.step()
            scheduler.step()
            run.log(epoch=epoch, train_loss=loss.item())
        run.save(model)
    return run


def test_a_fabric_loop_watched_after_setup_is_recorded_by_the_users_model_and_optimiser(tmp_path: Path) -> None:
    run = _fabric_run(tmp_path, "fabric")
    record = run.record
    assert record is not None
    (component,) = record.models
    arch = component.architecture
    assert (arch.module, arch.class_name, component.name, component.compiled) == (
        __name__,
        "FabricNet",
        "FabricNet",
        False,
    )
    assert record.architecture.import_path == f"{__name__}:FabricNet"
    names = ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    assert record.results.trace is not None and record.results.trace.tensors == names
    state = load_weights(open_dataset(str(run.uri)), record)
    assert sorted(state) == sorted(names)
    (opt,) = record.training.optimizers
    assert (opt.module, opt.class_name, opt.steps) == ("torch.optim.sgd", "SGD", 2 * 4)
    assert [g["param_names"] for g in record.training.optimizer.param_groups] == [names]
    assert (opt.applied[0].step, opt.applied[0].values["lr"], opt.applied[0].values["momentum"]) == (1, 0.1, 0.9)
    assert [(c.step, c.values) for c in opt.applied[1:]] == [(5, {"lr": 0.05})]  # the lr as applied
    assert opt.scheduler is not None and opt.scheduler.class_name == "StepLR"
    assert record.training.optimizer_steps == 2 * 4 and component.steps == 2 * 4
    assert record.results.trace.n_steps == 2 * 4
    checks = verify_model(str(run.uri), allow=[__name__])
    assert checks.ok, [(c.name, c.detail) for c in checks.checks if not c.ok]
    # the operation log names the modules by the user's model, not by Fabric's wrapper path
    from reprodl.reproduction.divergence import load_oplogs

    modules = {e["module"] for entries in load_oplogs(open_dataset(str(run.uri)), record).values() for e in entries}
    assert {"FabricNet.hidden", "FabricNet.out"} <= modules
    assert not any("_forward_module" in m or m.startswith("_FabricModule") for m in modules)


def test_a_fabric_loop_in_bf16_mixed_precision_records_the_autocast_fabric_applied(tmp_path: Path) -> None:
    run = _fabric_run(tmp_path, "fabric-bf16", precision="bf16-mixed")
    record = run.record
    assert record is not None
    (component,) = record.models
    assert [c.values for c in component.autocast] == [
        {"enabled": True, "device_type": "cpu", "dtype": "torch.bfloat16"}
    ]


# --- the script's settings stay the script's ------------------------------------------------------
@pytest.fixture
def script_flags() -> Any:
    """The script sets TF32 and cudnn.benchmark on; torch's flags are given back after the test."""
    was = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = was


def _tiny_run(base: str, name: str, *, deterministic: bool) -> tuple[Any, tuple[bool, bool]]:
    with reprodl.start_run(base, name, seed=0, deterministic=deterministic) as run:
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
        run.use(x)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, batch_size=8)
        model(x).sum().backward()
        optimizer.step()
        during = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
        run.save(model)
    return run.record, during


def test_a_scripts_tf32_is_kept_and_benchmark_is_changed_with_one_warning_and_both_values(
    tmp_path: Path, script_flags: Any
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record, during = _tiny_run(_base(tmp_path), "bitwise", deterministic=True)
    said = [w for w in caught if issubclass(w.category, DeterminismWarning)]
    assert len(said) == 1 and "cudnn.benchmark" in str(said[0].message)
    assert during == (True, False)  # TF32 as the script set it; benchmark off while training
    d = record.training.determinism
    assert (d.tf32_matmul, d.cudnn_benchmark, d.script_settings) == (True, False, {"cudnn_benchmark": True})
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == (True, True)  # given back


def test_a_statistical_run_changes_none_of_the_scripts_settings(tmp_path: Path, script_flags: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record, during = _tiny_run(_base(tmp_path), "statistical", deterministic=False)
    assert not [w for w in caught if issubclass(w.category, DeterminismWarning)]
    assert during == (True, True)
    d = record.training.determinism
    assert (d.tf32_matmul, d.cudnn_benchmark, d.script_settings) == (True, True, {})


def test_an_older_single_model_record_names_its_one_model(trained_model: Any) -> None:
    record = load_record(trained_model.uri)
    raw = record.model_dump(mode="json")
    del raw["models"], raw["training"]["optimizers"]
    old = type(record).model_validate(raw)
    (component,) = old.model_components()
    assert (component.name, component.weights_file) == ("model", "model.safetensors")
    assert component.weights_sha256 == record.results.weights_sha256
    assert component.architecture == record.architecture


def test_the_provenance_summary_names_every_model_and_optimiser(gan: dict[str, Any], cli: Any) -> None:
    result = cli("provenance", gan["uri"])
    assert result.exit_code == 0, result.output
    assert "Model discriminator: __main__:Discriminator, weights models/discriminator.safetensors" in result.stdout
    assert f"Optimiser generator (of generator): Adam, {GAN_STEPS} steps" in result.stdout


def test_an_optimiser_stepped_without_a_closure_is_recorded_without_one(tmp_path: Path) -> None:
    """torch gives a step pre-hook the optimiser itself as its first argument: that is not a closure."""
    run = _train_two_steps(tmp_path, "sgd", nn.Linear(3, 1))
    record = run.record
    assert record is not None
    (opt,) = record.training.optimizers
    assert (opt.closure, opt.steps) == (False, 2)


def test_one_module_with_two_optimisers_counts_each_steps_backward_passes(tmp_path: Path) -> None:
    """A GAN in one module (a LightningModule's shape): the discriminator's step is preceded by a backward
    pass that never reaches the generator's parameters; each step still counts the passes it applied."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gen, self.disc = nn.Linear(2, 4), nn.Linear(4, 1)

    g = torch.Generator().manual_seed(0)
    real = torch.randn(8, 4, generator=g)
    with reprodl.start_run(_base(tmp_path), "pair", seed=0) as run:
        run.use(real)
        pair = Pair()
        opt_g = torch.optim.SGD(pair.gen.parameters(), lr=0.1)
        opt_d = torch.optim.SGD(pair.disc.parameters(), lr=0.1)
        run.watch(pair, [opt_g, opt_d], batch_size=8)
        for _ in range(2):
            fake = pair.gen(torch.randn(8, 2, generator=g))
            opt_g.zero_grad()
            pair.disc(fake).mean().backward()  # reaches both: the generator's step
            opt_g.step()
            opt_d.zero_grad()
            for _ in range(2):  # two accumulated passes that reach only the discriminator
                (pair.disc(real).mean() - pair.disc(fake.detach()).mean()).backward()
            opt_d.step()
        run.save(pair)
    record = run.record
    assert record is not None
    (model,) = record.models
    passes = {change.step: change.values["backward_passes"] for change in model.accumulation}  # changes only
    assert passes == {1: 1, 2: 2, 3: 1, 4: 2}, model.accumulation


def _train_keeping_copies(tmp_path: Path, name: str, save: Any) -> Any:
    """Three epochs of two steps; ``save(run, model, copies)`` ends it (copies: the model after each epoch)."""
    import copy

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    with reprodl.start_run(_base(tmp_path), name, seed=0) as run:
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer)
        copies = []
        for _ in range(3):
            for xb, yb in run.loader(torch.utils.data.TensorDataset(x, y), batch_size=8):
                optimizer.zero_grad()
                nn.functional.mse_loss(model(xb), yb).backward()
                optimizer.step()
            copies.append(copy.deepcopy(model))  # "the best so far", as pytorch/examples keep it
        save(run, model, copies)
    return run.record


def test_a_saved_copy_of_the_model_records_the_step_its_weights_were_taken_at(tmp_path: Path) -> None:
    """run.save(best) where best is a copy (the best epoch's, reloaded): the record's saved_at_step is the
    traced step whose digests its weights have, not the step the run had reached."""
    record = _train_keeping_copies(tmp_path, "best", lambda run, model, copies: run.save(copies[0]))
    assert record.training.optimizer_steps == 6
    assert record.results.saved_at_step == 2  # after the first epoch
    record = _train_keeping_copies(tmp_path, "last", lambda run, model, copies: run.save(copies[-1]))
    assert record.results.saved_at_step == 6


def test_a_saved_copy_whose_weights_no_step_had_is_named_at_training_time(tmp_path: Path) -> None:
    """Weights no traced step had (averaged, edited): saved_at_step is unknown (None), and the run says so."""

    def averaged(run: Any, model: nn.Module, copies: list[nn.Module]) -> None:
        with torch.no_grad():
            copies[0].weight.add_(copies[1].weight).div_(2)
        run.save(copies[0])

    with pytest.warns(UserWarning, match="match no traced step"):
        record = _train_keeping_copies(tmp_path, "avg", averaged)
    assert record.results.saved_at_step is None


def test_saving_a_module_that_is_neither_watched_nor_a_copy_of_a_watched_one_is_refused(tmp_path: Path) -> None:
    def other(run: Any, model: nn.Module, copies: list[nn.Module]) -> None:
        run.save(nn.Linear(5, 2))

    with pytest.raises(reprodl.errors.ParametersError, match="run.watch was not given"):
        _train_keeping_copies(tmp_path, "other", other)


def test_in_memory_data_records_its_size_as_the_whole_dataset(tmp_path: Path) -> None:
    """And a loader built each epoch over equal data records that data once, not once per epoch."""
    record = _train_keeping_copies(tmp_path, "sizes", lambda run, model, copies: run.save(model))
    (train,) = record.data
    assert (train.source, train.n_items, train.n_dataset_items) == ("in-memory", 16, 16)


class _ListNet(nn.Module):
    """Layers in a plain list (pytorch/examples' mnist_forward_forward): the module holds no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = [nn.Linear(3, 4), nn.Linear(4, 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_an_optimiser_of_parameters_no_watched_model_holds_is_refused_at_its_first_step(tmp_path: Path) -> None:
    """Its updates would be in no record, no trace and no saved weights: a 1e-6 change to them was 'identical'."""
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(reprodl.errors.ParametersError, match="2 parameters .* no watched model holds.*ModuleList"):
        with reprodl.start_run(_base(tmp_path), "listnet", seed=0) as run:
            run.use(x)
            model = _ListNet()
            model.scale = nn.Parameter(torch.ones(1))  # one parameter of its own: watched, then refused at the step
            optimizers = [torch.optim.SGD(layer.parameters(), lr=0.1) for layer in model.layers]
            run.watch(model, optimizers, batch_size=16)
            for o in optimizers:
                o.zero_grad()
            model(x).pow(2).mean().backward()
            optimizers[0].step()  # refused here, before its update


def test_one_optimiser_over_two_watched_models_is_accepted(tmp_path: Path) -> None:
    """An encoder and a decoder watched apart, one optimiser over both: every parameter is held by a watched model."""
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    with reprodl.start_run(_base(tmp_path), "encdec", seed=0) as run:
        run.use(x)
        enc, dec = nn.Linear(3, 2), nn.Linear(2, 3)
        optimizer = torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.1)
        run.watch(enc, optimizer, name="encoder")
        run.watch(dec, name="decoder")
        for _ in range(2):
            optimizer.zero_grad()
            (dec(enc(x)) - x).pow(2).mean().backward()
            optimizer.step()
        run.save({"encoder": enc, "decoder": dec})
    assert run.record is not None and run.record.training.optimizers[0].steps == 2


def test_a_model_that_holds_no_parameters_is_refused_when_watched(tmp_path: Path) -> None:
    with reprodl.start_run(_base(tmp_path), "empty", seed=0) as run:
        run.use(torch.zeros(2))
        with pytest.raises(reprodl.errors.ParametersError, match="holds no parameters"):
            run.watch(_ListNet(), [])
        model = nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, batch_size=2)  # the run goes on
        model(torch.ones(2, 2)).sum().backward()
        optimizer.step()
        run.save(model)
    assert run.record is not None and run.record.training.optimizers[0].steps == 1


def test_no_training_data_by_the_first_step_is_said_then_not_only_at_save(tmp_path: Path) -> None:
    """A loop that draws its data itself (pytorch/examples' regression) learnt of the missing run.use at run.save,
    after the whole training; it is said at the first step."""
    with pytest.raises(reprodl.errors.ParametersError, match="no training data was recorded: pass it to run.use"):
        with reprodl.start_run(_base(tmp_path), "drawn", seed=0) as run:
            model = nn.Linear(3, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            run.watch(model, optimizer, batch_size=4)
            with pytest.warns(UserWarning, match="no training data was recorded by the first optimiser step"):
                for _ in range(2):
                    optimizer.zero_grad()
                    model(torch.randn(4, 3)).pow(2).mean().backward()
                    optimizer.step()
            run.save(model)
