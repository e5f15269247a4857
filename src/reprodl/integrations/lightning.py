"""Lightning: record and reproduce ``Trainer.fit`` with one callback (``pip install 'reprodl[lightning]'``).

    >>> from reprodl.integrations.lightning import ReprodlCallback              # doctest: +SKIP
    >>> L.seed_everything(1)                                                   # doctest: +SKIP
    >>> trainer = L.Trainer(max_epochs=2, callbacks=[ReprodlCallback("models", "digits")])  # doctest: +SKIP
    >>> trainer.fit(model, datamodule=data)                                    # doctest: +SKIP

The callback is a user of the run API (:class:`reprodl.training.run.Run`), so a Lightning model
has the same record as a ``start_run`` script and reproduces the same way, by re-executing the
recorded script (``reprodl reproduce URI --trust-code``):

- ``on_fit_start`` starts the run (code, source snapshot, environment, the seed of
  ``seed_everything``, determinism settings), records the Trainer's settings, the module's
  hyperparameters, the optimisers and schedulers of ``configure_optimizers``, and the reprodl
  datasets held by the DataModule, and watches the module and every optimiser (each one's steps
  counted, manual optimisation included);
- the datasets of the train and validation loaders are recorded when Lightning loads them, and
  the train loader's sample order is tapped (:mod:`reprodl.training.order`) before Lightning
  first reads it: a digest per epoch in ``training.data_order_digests``; a loader whose order
  cannot be read (a custom sampler), or an epoch whose order was not seen, is named in
  ``training.data_order_not_recorded`` (and in ``reprodl provenance``) instead;
- each epoch's metrics are ``trainer.callback_metrics`` (what ``self.log`` logged) read after all
  of the epoch's end hooks, the module's ``on_train_epoch_end`` included: at the next epoch's
  start, or at ``on_train_end`` for the last;
- ``on_fit_end`` saves the weights and writes the model dataset; on an exception nothing is written.

The Trainer's settings go to ``training.params["trainer"]``, the hyperparameters to
``training.params["hparams"]`` (and ``architecture.init_params``), the schedulers with their
``interval`` and ``frequency`` to ``training.params["lr_schedulers"]``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import MissingDependencyError, ParametersError
from reprodl.provenance import ProvenanceRecord
from reprodl.training.capture import changed_setting, describe_callable, jsonable
from reprodl.training.order import untap
from reprodl.training.run import Run

try:
    import lightning
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import CombinedLoader
except ImportError:
    raise MissingDependencyError(
        "reprodl.integrations.lightning needs Lightning: install it with `pip install 'reprodl[lightning]'`"
    ) from None

SEED_ENV = "PL_GLOBAL_SEED"  # set by lightning.seed_everything
LOSS_ATTRIBUTES = ("loss_fn", "criterion", "loss")  # where a LightningModule usually keeps a loss module


class ReprodlCallback(Callback):
    """Record a ``Trainer.fit`` as a reprodl model dataset; reproducible by re-executing the script.

    Args:
        base_uri: where to create the model dataset (path, file://, s3://).
        name: the model dataset's name.
        params: more parameters to record verbatim (``vars(args)`` for argparse).
        deterministic: apply torch's bitwise-determinism settings during ``fit`` (else "statistical" mode).
        require_clean_code: refuse (:class:`DirtyCodeError`) unless the code is committed.

    After ``fit``, ``uri`` is the model dataset's URI and ``record`` its provenance record.

    Example:
        >>> L.seed_everything(1)                                                # doctest: +SKIP
        >>> callback = ReprodlCallback("models", "digits")                     # doctest: +SKIP
        >>> L.Trainer(max_epochs=2, callbacks=[callback]).fit(model, data)     # doctest: +SKIP
        >>> callback.uri                                                        # doctest: +SKIP
    """

    def __init__(
        self,
        base_uri: str,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        deterministic: bool = True,
        require_clean_code: bool = False,
    ) -> None:
        super().__init__()
        self.base_uri, self.name = base_uri, name
        self.params = dict(params or {})
        self.deterministic, self.require_clean_code = deterministic, require_clean_code
        self.run: Run | None = None
        self.uri: str | None = None
        self.record: ProvenanceRecord | None = None
        self._used: set[tuple[int, str]] = set()
        self._epoch_ended: int | None = None  # the epoch whose metrics are read at the next epoch's start
        self._epoch_validated = self._validated = False  # whether validation ran in that epoch, in this one
        self._valid_keys: set[str] = set()  # the metrics validation logged
        self._before_validation: dict[str, Any] = {}
        self._first_epoch: int | None = None
        self._tapped: list[Any] = []
        self._source: Any = None  # Lightning's train-loader source, its dataloader() tapped during fit

    # --- Lightning's hooks -------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.world_size > 1:
            raise ParametersError(
                f"ReprodlCallback records single-process training, but the Trainer runs {trainer.world_size} "
                "processes (world_size): train with devices=1, or record with reprodl.start_run"
            )
        settings = trainer_settings(trainer)  # before the run applies its determinism settings
        self.run = run = self._start(global_seed(), output_dirs(trainer))
        if settings["deterministic"] is False and self.deterministic:
            changed_setting(
                run.determinism,
                "use_deterministic_algorithms",
                False,
                "deterministic algorithms were off when fit started (Trainer(deterministic=False), or left unset); "
                "ReprodlCallback(deterministic=True) switched them on for a bitwise record. Pass "
                "ReprodlCallback(..., deterministic=False) to keep them off (a statistical record)",
            )
        hparams = module_hparams(pl_module)
        schedulers = list(trainer.lr_scheduler_configs)
        run.log_params({"trainer": settings, "hparams": hparams, "lr_schedulers": describe_schedulers(schedulers)})
        optimizers = list(trainer.optimizers)
        if not optimizers:
            raise ParametersError(
                f"ReprodlCallback found no optimiser: {type(pl_module).__qualname__}.configure_optimizers "
                "returned none, so there is nothing to record; return the optimiser there"
            )
        run.watch(
            pl_module,
            optimizers,  # every one, its steps counted whoever calls step() (manual optimisation included)
            scheduler=first_schedulers(schedulers),
            loss=find_loss(pl_module),
            init_params=hparams,
        )
        if trainer.datamodule is not None:
            for role, ds in datamodule_datasets(trainer.datamodule):
                self._use(ds, role)
        self._tap_source(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        for i, loader in enumerate(loaders(trainer.train_dataloader)):
            self._use(loader.dataset, "train")
            if i == 0 and self.run is not None:
                self.run.record_loader(loader)
        self._tap(trainer.train_dataloader)
        self._use_val_loaders(trainer)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Where the step is (epoch and batch, from 1) and its inputs' digest in the trace; the operation log
        of the first step starts here."""
        if self.run is not None:
            self.run._on_batch(trainer.current_epoch + 1, batch_idx + 1, None, batch)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._log_ended_epoch(trainer)
        if self._first_epoch is None:
            self._first_epoch = trainer.current_epoch
        self._tap(trainer.train_dataloader)  # a reloaded loader (reload_dataloaders_every_n_epochs)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._use_val_loaders(trainer)
        if not trainer.sanity_checking:
            self._before_validation = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:  # what validation logged, its epoch-end hooks included
            before = self._before_validation
            self._valid_keys |= {
                k for k, v in trainer.callback_metrics.items() if k not in before or v is not before[k]
            }
            self._validated = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Runs before the module's own on_train_epoch_end: its metrics are read at the next epoch's start.
        self._epoch_ended, self._epoch_validated = trainer.current_epoch + 1, self._validated
        self._validated = False
        self._check_order(trainer.current_epoch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._log_ended_epoch(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._log_ended_epoch(trainer)
        self._untap()
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.save(pl_module)
        except BaseException as error:
            run.__exit__(type(error), error, error.__traceback__)
            raise
        run.__exit__(None, None, None)
        self.uri, self.record = run.uri, run.record

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._untap()
        run, self.run = self.run, None
        if run is not None:
            run.__exit__(type(exception), exception, exception.__traceback__)  # writes nothing

    # --- the run -------------------------------------------------------------------------------
    def _start(self, seed: int, outputs: list[Path] | None = None) -> Run:
        """The run, entered; the global generators left as ``seed_everything`` and the model left them.

        ``outputs``: the directories the Trainer writes to, whose untracked files are not code."""
        run = Run(
            self.base_uri,
            self.name,
            seed=seed,
            params=self.params,
            deterministic=self.deterministic,
            require_clean_code=self.require_clean_code,
        )
        run._output_dirs = list(outputs or [])
        state = rng_state()
        run.__enter__()
        if run.seed == seed:  # else a reproduction asked for another seed: keep the run's seeding
            set_rng_state(state)
        self._used.clear()
        self._epoch_ended = self._first_epoch = None
        self._epoch_validated = self._validated = False
        self._valid_keys.clear()
        return run

    def _use_val_loaders(self, trainer: Any) -> None:
        for loader in loaders(trainer.val_dataloaders):
            self._use(loader.dataset, "valid")

    def _log_ended_epoch(self, trainer: Any) -> None:
        """Log the epoch that ended: ``trainer.callback_metrics`` once all its end hooks have run.

        In an epoch without validation (``check_val_every_n_epoch``), the validation metrics that
        ``callback_metrics`` still holds from an earlier epoch are left out.
        """
        epoch, self._epoch_ended = self._epoch_ended, None
        if epoch is None or self.run is None:
            return
        stale = set() if self._epoch_validated else self._valid_keys
        skip = {"epoch", "step", *stale}
        self.run.log(epoch=epoch, **{k: v for k, v in trainer.callback_metrics.items() if k not in skip})

    # --- the data order ------------------------------------------------------------------------
    def _tap_source(self, trainer: Any) -> None:
        """Tap the train loaders as Lightning requests them, before its first read of them.

        Lightning draws a worker loader's first indices as it requests it, before ``on_train_start``;
        where its source cannot be reached, ``on_train_start`` taps, and ``_check_order`` says
        when an epoch's order was missed.
        """
        source = getattr(trainer.fit_loop, "_data_source", None)
        request = getattr(source, "dataloader", None)
        if source is None or request is None:
            return

        def tapped() -> Any:
            result = request()
            self._tap(result)
            return result

        source.dataloader, self._source = tapped, source

    def _tap(self, train_loaders: Any) -> None:
        """Record the order of the (single) train loader in ``train_loaders``; else say why not."""
        if self.run is None:
            return
        found = list(loaders(train_loaders))
        if len(found) != 1:
            self.run.order_not_recorded(
                f"the Trainer has {len(found)} train DataLoaders; reprodl records the order of exactly one"
            )
            return
        if self.run.record_order(found[0]):
            self._tapped.append(found[0])

    def _check_order(self, epoch: int) -> None:
        """After epoch ``epoch`` (from 0): one order per epoch so far, else the record says so."""
        if self.run is None or self._first_epoch is None:
            return
        expected, seen = epoch + 1 - self._first_epoch, len(self.run.order_digests)
        if seen != expected:
            self.run.order_not_recorded(
                f"{seen} sample orders were seen in {expected} epochs (after epoch {epoch + 1}): Lightning read "
                "the train loader other than once per epoch, or through a sampler reprodl did not tap"
            )

    def _untap(self) -> None:
        """Give the user's loaders their samplers, and Lightning its loader source, back."""
        for loader in self._tapped:
            untap(loader)
        self._tapped.clear()
        if self._source is not None:
            vars(self._source).pop("dataloader", None)
            self._source = None

    def _use(self, ds: Any, role: str) -> None:
        """Record ``ds`` in ``role`` once: a ``Subset``/``ConcatDataset`` as the datasets it is made of, with
        its views (``run.use``), in place of a whole-dataset entry the DataModule's scan made for one of them."""
        key = (id(ds), role)
        if self.run is None or key in self._used:
            return
        self._used.add(key)
        data = self.run._data  # (record, dataset) pairs, in the order recorded
        before = len(data)
        self.run.use(ds, role=role)
        moved = set()
        for i in range(before, len(data)):
            ref, leaf = data[i]
            whole = [
                j for j in range(before) if data[j][1] is leaf and data[j][0].role == role and not data[j][0].views
            ]
            if ref.views and whole:
                data[whole[0]] = data[i]
                moved.add(i)
        data[:] = [pair for i, pair in enumerate(data) if i not in moved]


# --- what is recorded ----------------------------------------------------------------------
def global_seed() -> int:
    """The seed ``lightning.seed_everything`` set; refuses when none was set."""
    raw = os.environ.get(SEED_ENV)
    if raw is None:
        raise ParametersError(
            "ReprodlCallback needs the run's seed, but lightning.seed_everything was not called "
            f"({SEED_ENV} is not set): call L.seed_everything(seed) before building the model"
        )
    try:
        return int(raw)
    except ValueError:
        raise ParametersError(f"{SEED_ENV} should be an integer seed, but got {SEED_ENV}={raw!r}") from None


def output_dirs(trainer: Any) -> list[Path]:
    """The directories the Trainer writes to: each logger's (``lightning_logs/``, all its versions, when
    the logger has a root directory, else ``trainer.log_dir``) and each checkpoint callback's.

    Lightning's logger writes there before ``on_fit_start`` and earlier fits left their versions and
    checkpoints: outputs, not code. A directory holding the working directory (``default_root_dir``,
    a logger with no name) is never left out (:func:`reprodl.training.source.capture_code`)."""
    found: list[Any] = []
    for logger in getattr(trainer, "loggers", None) or []:
        found += [getattr(logger, "root_dir", None), getattr(logger, "log_dir", None)]
    if getattr(trainer, "loggers", None):
        found.append(getattr(trainer, "log_dir", None))
    found += [getattr(c, "dirpath", None) for c in getattr(trainer, "checkpoint_callbacks", None) or []]
    out: list[Path] = []
    for path in found:
        if isinstance(path, (str, os.PathLike)) and "://" not in str(path) and Path(path) not in out:
            out.append(Path(path))
    return out


def trainer_settings(trainer: Any) -> dict[str, Any]:
    """The Trainer's settings that decide what trains (``deterministic``: torch's setting in force)."""
    algorithm = getattr(trainer.gradient_clip_algorithm, "value", None)
    if algorithm is None and trainer.gradient_clip_val:
        algorithm = "norm"  # Lightning's default
    return jsonable(
        {
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "precision": trainer.precision,
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": algorithm,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "deterministic": _deterministic_in_force(),
            "limit_train_batches": trainer.limit_train_batches,
            "limit_val_batches": trainer.limit_val_batches,
            "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
            "accelerator": type(trainer.accelerator).__name__,
            "num_devices": trainer.num_devices,
            "lightning_version": lightning.__version__,
        }
    )


def _deterministic_in_force() -> bool | str:
    if not torch.are_deterministic_algorithms_enabled():
        return False
    return "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else True


def module_hparams(pl_module: Any) -> dict[str, Any]:
    """The module's ``save_hyperparameters()`` values, internal keys (``_instantiator``...) dropped."""
    hparams = dict(getattr(pl_module, "hparams", {}) or {})
    return jsonable({k: v for k, v in hparams.items() if not str(k).startswith("_")})


def describe_schedulers(configs: list[Any]) -> list[dict[str, Any]]:
    """Each scheduler of ``configure_optimizers`` with how Lightning steps it (interval, frequency)."""
    return [
        {
            **describe_callable(c.scheduler).model_dump(mode="json"),
            "interval": c.interval,
            "frequency": c.frequency,
            "monitor": c.monitor,
        }
        for c in configs
    ]


def first_schedulers(configs: list[Any]) -> list[Any]:
    """The first scheduler of each optimiser (all of them are in ``training.params["lr_schedulers"]``)."""
    out: list[Any] = []
    for c in configs:
        if not any(getattr(s, "optimizer", None) is getattr(c.scheduler, "optimizer", s) for s in out):
            out.append(c.scheduler)
    return out


def find_loss(pl_module: Any) -> Any:
    """The module's loss module (``self.loss_fn``, ``self.criterion``...), else its ``training_step``."""
    for name in LOSS_ATTRIBUTES:
        value = getattr(pl_module, name, None)
        if isinstance(value, torch.nn.Module):
            return value
    return type(pl_module).training_step


def datamodule_datasets(datamodule: Any) -> Iterator[tuple[str, WrappedDataSet]]:
    """The reprodl datasets a DataModule holds, by role read from the attribute's name."""
    for attr, value in vars(datamodule).items():
        if not isinstance(value, WrappedDataSet):
            continue
        role = next((r for key, r in (("test", "test"), ("val", "valid"), ("train", "train")) if key in attr), None)
        if role is not None:
            yield role, value


def loaders(obj: Any) -> Iterator[Any]:
    """The DataLoaders in what Lightning holds (one, a list or a dict of them, a CombinedLoader)."""
    if isinstance(obj, torch.utils.data.DataLoader):
        yield obj
    elif isinstance(obj, CombinedLoader):
        yield from loaders(obj.flattened)
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from loaders(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from loaders(value)


def rng_state() -> tuple[Any, ...]:
    """Python's, NumPy's and torch's global generator states (CUDA's when initialised)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def set_rng_state(state: tuple[Any, ...]) -> None:
    """Restore what :func:`rng_state` returned."""
    python, numpy_state, torch_state, cuda = state
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
