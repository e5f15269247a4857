"""Using a trained model from any URI: load safely, predict, evaluate.

Weights are read with safetensors only; the one exception is a model made by the original
dtoolAI, whose ``model.pt`` state dict is read with ``torch.load(weights_only=True)`` (no code
runs, anything but named tensors is refused). Any other pickle is refused. The architecture is rebuilt
from the record only when its module is in reprodl's zoo, in an allow-list the user passes,
or when the user passes the class itself: metadata from a URI never names code that runs
unasked.

Example:
    >>> model = TrainedTorchModel("http://example.org/models/digits")   # doctest: +SKIP
    >>> model.convert_and_predict(Image.open("handwritten_8.png"))     # doctest: +SKIP
    '8'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from reprodl import keys, trust
from reprodl.data.baselines import evaluation_baselines
from reprodl.data.datasets import WrappedDataSet, collate
from reprodl.data.images import convert, resize, to_array
from reprodl.data.labels import checked_encoding
from reprodl.data.transforms import Resize, contains, eval_view, from_description
from reprodl.errors import DatasetFormatError, ModelLoadError, TransformError
from reprodl.modeldataset.legacy import is_dtoolai_model, load_dtoolai_model
from reprodl.modeldataset.read import PICKLE_SUFFIXES, load_weights, read_record
from reprodl.provenance import ProvenanceRecord
from reprodl.store import open_dataset

#: The evaluation batch sizes :meth:`TrainedTorchModel.evaluate` also runs, to show whether the
#: metric depends on the batch size (kernels pick other code paths for other batch shapes).
INVARIANCE_BATCH_SIZES = (256, 7, 1)

TRUSTED_MODULES = trust.TRUSTED_MODULES[trust.Kind.ARCHITECTURE]


def resolve_class(
    import_path: str,
    *,
    allow: Iterable[str] = (),
    model_class: type | None = None,
    record: ProvenanceRecord | None = None,
    dataset: Any = None,
) -> type:
    """The model class named by a record, if the trust policy (:mod:`reprodl.trust`) allows it.

    ``allow`` holds module names or ``module:Class`` paths the user trusts ("mypkg.models"
    allows every class defined in that module and its submodules). ``model_class`` is used
    as given: the user chose it. A class defined in a training script (``__main__:Net``) is
    never rebuilt from the code stored with the model, since its class body, decorators and
    defaults would run: pass it as ``model_class``, or reproduce a ``start_run`` model by
    re-execution (``--trust-code``, which shows the code's digest first). ``record`` and
    ``dataset`` name the model in that refusal.
    """
    if model_class is not None:
        return model_class
    trust.refuse_script_class(import_path, where=getattr(dataset, "uri", None))
    cls: type = trust.resolve(import_path, trust.Kind.ARCHITECTURE, allow=allow)
    return cls


class TrainedTorchModel:
    """A trained model loaded from a model dataset at any URI.

    Args:
        uri: the model dataset's URI or path.
        allow: modules (or ``module:Class``) trusted to be imported for the architecture.
        model_class: the architecture class to use instead of the recorded import path.
        device: where to run ("cpu", "cuda"...); default CPU.
        transform: the preprocessing :meth:`convert_image` applies, instead of the eval view
            of the training data's recorded transform (needed when that was a transform of
            your own, which reprodl does not rebuild from a record).
        model: which of the record's models to load, by name (``"discriminator"`` of a run that
            saved ``{"generator": G, "discriminator": D}``); None: the first (the default).

    Attributes:
        transform: the preprocessing for prediction: the training transform's eval view
            (:func:`reprodl.data.transforms.eval_view`: Resize, ToTensor, Normalize... kept, random
            augmentation dropped), or None.
        input_shape: the shape of one model input, after that preprocessing.
    """

    def __init__(
        self,
        uri: str,
        *,
        allow: Iterable[str] = (),
        model_class: type | None = None,
        device: str | torch.device = "cpu",
        transform: Callable[[Any], Any] | None = None,
        model: str | None = None,
    ) -> None:
        self.dataset = open_dataset(uri)
        self.uri = self.dataset.uri
        record, loaded = _record_and_weights(self.dataset, model_class)
        self.provenance: ProvenanceRecord = record
        self.component = self.provenance.model_component(model)  # the model loaded, of the record's models
        arch = self.component.architecture
        cls = resolve_class(
            arch.import_path, allow=allow, model_class=model_class, record=self.provenance, dataset=self.dataset
        )
        trust.check_size(cls, arch.init_params, expected=arch.n_parameters, what=arch.import_path)
        try:
            self.model: torch.nn.Module = cls(**arch.init_params)
        except TypeError as exc:
            raise ModelLoadError(f"cannot build {arch.import_path} with {arch.init_params}: {exc}") from None
        state = load_weights(self.dataset, self.provenance, model=model) if loaded is None else loaded
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(f"the weights in {self.uri} do not fit {arch.import_path}: {exc}") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        train = self.provenance.data_by_role("train")[0]
        self.cat_encoding = _recorded_encoding(train.category_encoding, self.uri)
        self.categories = [n for n, _ in sorted(self.cat_encoding.items(), key=lambda kv: kv[1])]
        self.data_shape = _bounded_shape(train.input_shape, self.uri)  # one sample as the dataset holds it
        self.image_mode = train.image_mode or {1: "L", 3: "RGB", 4: "RGBA"}.get(
            self.data_shape[0] if self.data_shape else 1, "L"
        )
        self._images = train.input_type == keys.INPUT_TYPE_IMAGE
        self._transform_problem: str | None = None
        self.transform = transform
        if transform is None and train.transform is not None:
            try:
                self.transform = eval_view(from_description(train.transform))
            except TransformError as exc:
                self._transform_problem = (
                    f"the model was trained on data read through a transform that reprodl cannot rebuild ({exc}): "
                    "pass the preprocessing yourself, TrainedTorchModel(uri, transform=...)"
                )
        self.input_shape = self._input_shape()

    @property
    def name(self) -> str:
        """The recorded model name."""
        return self.provenance.model_name

    def get_readme_content(self) -> str:
        """The model dataset's README text."""
        return self.dataset.get_readme_content()

    @torch.no_grad()
    def predict(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Predicted label indices for a batch of model inputs (:attr:`input_shape`, already
        preprocessed: :meth:`convert_image` does that for a PIL image)."""
        x = torch.as_tensor(batch, dtype=torch.float32)
        if self.input_shape and tuple(x.shape[1:]) != self.input_shape:
            if tuple(x.shape) == self.input_shape:
                x = x[None]
            else:
                raise ModelLoadError(
                    f"inputs of shape {tuple(x.shape)} do not fit the model's "
                    f"(N, {', '.join(map(str, self.input_shape))})"
                )
        return self.model(x.to(self.device)).argmax(1).cpu()

    def predict_categories(self, batch: torch.Tensor | np.ndarray) -> list[str]:
        """Predicted category names for a batch of model inputs (see :meth:`predict`)."""
        predicted = self.predict(batch).tolist()
        beyond = [i for i in predicted if i >= len(self.categories)]
        if beyond:
            raise ModelLoadError(
                f"{self.uri}: the model predicts class {beyond[0]}, but its record's category_encoding names "
                f"{len(self.categories)} categories ({self.cat_encoding}); the record does not fit the model"
            )
        return [self.categories[i] for i in predicted]

    def convert_image(self, image: Any) -> torch.Tensor:
        """A PIL image of any mode and size as a model input, preprocessed as in training.

        The image is converted to the training data's mode and, unless the transform resizes,
        to its recorded size; then :attr:`transform` (the deterministic part of the training
        data's transform) is applied, as the training applied it to its ImageDataSet images
        or TensorDataSet samples.
        """
        if self._transform_problem is not None:
            raise ModelLoadError(self._transform_problem)
        if len(self.data_shape) != 3 and not (self._images and contains(self.transform, Resize)):
            raise ModelLoadError(f"the model's inputs are not images (recorded shape {self.data_shape})")
        if self._images and self.transform is not None:
            image = convert(image, self.image_mode)
            if len(self.data_shape) == 3 and not contains(self.transform, Resize):
                image = resize(image, (self.data_shape[2], self.data_shape[1]))
            return _as_input(self.transform(image))
        _, h, w = self.data_shape
        x = torch.from_numpy(to_array(resize(image, (w, h)), self.image_mode))
        return x if self.transform is None else _as_input(self.transform(x))

    def _input_shape(self) -> tuple[int, ...]:
        """The shape :attr:`transform` gives a sample of the recorded shape (the recorded one without)."""
        if self.transform is None or len(self.data_shape) != 3:
            return self.data_shape
        _, h, w = self.data_shape
        if self._images:
            from PIL import Image

            sample: Any = Image.new(self.image_mode, (w, h))
        else:
            sample = torch.zeros(self.data_shape)
        try:
            with torch.random.fork_rng(devices=[]):
                return tuple(_as_input(self.transform(sample)).shape)
        except Exception:  # noqa: BLE001 - a transform of the user's that rejects a blank sample
            return self.data_shape

    def convert_and_predict(self, image: Any) -> str:
        """The category name the model gives a PIL image."""
        return self.predict_categories(self.convert_image(image)[None])[0]

    @torch.no_grad()
    def evaluate(
        self, dataset: WrappedDataSet, *, batch_size: int = 256, batch_sizes: Iterable[int] = INVARIANCE_BATCH_SIZES
    ) -> dict[str, Any]:
        """Accuracy, per-class precision/recall, confusion matrix, next to the majority baseline;
        ``baselines``: the majority and stratified-random baselines with P(model > baseline)
        (:func:`reprodl.data.baselines.evaluation_baselines`); ``batch_size_invariance``: the
        accuracy again at each of ``batch_sizes`` and its band (:func:`batch_size_invariance`).

        The dataset is used as given, through its own transform (if any). To evaluate with the
        training's preprocessing, open it with this model's: ``TensorDataSet(uri, "test",
        transform=model.transform)``.
        """
        if dataset.cat_encoding != self.cat_encoding:
            raise ModelLoadError(
                f"dataset {dataset.name!r} encodes labels as {dataset.cat_encoding}, the model as "
                f"{self.cat_encoding}: evaluate on data with the model's categories"
            )
        k = len(self.categories)
        sizes = list(dict.fromkeys([batch_size, *batch_sizes]))
        outputs = {size: self.logits(dataset, size) for size in sizes}
        labels = outputs[batch_size][1]
        pred = outputs[batch_size][0].argmax(1)
        confusion = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
        report = evaluation_report(
            confusion.numpy(), self.categories, dataset_name=dataset.name, dataset_uri=dataset.uri
        )
        report["batch_size_invariance"] = batch_size_invariance({s: o[0] for s, o in outputs.items()}, labels)
        return report

    @torch.no_grad()
    def logits(self, dataset: WrappedDataSet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs on every sample of ``dataset``, in order, and the labels."""
        k = len(self.categories)
        outputs, labels = [torch.zeros(0, k)], [torch.zeros(0, dtype=torch.int64)]
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
        for x, y in loader:
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ModelLoadError(
                    f"dataset {dataset.name!r} has labels outside 0..{k - 1} "
                    f"(found {int(y.min())}..{int(y.max())}): the model has {k} categories"
                )
            outputs.append(self.model(x.to(self.device)).detach().float().cpu())
            labels.append(y)
        return torch.cat(outputs), torch.cat(labels)


def batch_size_invariance(logits: dict[int, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """Whether the accuracy changes with the evaluation batch size, and by how much.

    ``logits``: the outputs on the same samples at each batch size. Returns the accuracy at each
    size, ``band`` (the largest minus the smallest accuracy: a difference in accuracy no larger
    than it may come from the batch size alone), ``invariant`` (band 0), the predictions that
    differ from the first size's, and the largest absolute difference of the outputs.
    """
    sizes = list(logits)
    first = logits[sizes[0]]
    n = max(int(labels.numel()), 1)
    accuracy = {str(s): float((out.argmax(1) == labels).sum()) / n for s, out in logits.items()}
    band = max(accuracy.values()) - min(accuracy.values()) if accuracy else 0.0
    return {
        "batch_sizes": sizes,
        "accuracy": accuracy,
        "band": band,
        "invariant": band == 0.0,
        "predictions_changed": max((int((o.argmax(1) != first.argmax(1)).sum()) for o in logits.values()), default=0),
        "max_output_difference": max(float((o - first).abs().max()) if o.numel() else 0.0 for o in logits.values()),
        "outputs_identical": all(torch.equal(o, first) for o in logits.values()),
    }


def _record_and_weights(ds: Any, model_class: type | None) -> tuple[ProvenanceRecord, dict[str, torch.Tensor] | None]:
    """The record of a reprodl model (weights read later, against it), or of a dtoolAI one with its weights.

    A dtoolAI model's ``model.pt`` is read with ``torch.load(weights_only=True)`` (no code runs) and
    its record made from its annotations (:mod:`reprodl.modeldataset.legacy`); any other pickle is refused.
    """
    try:
        return read_record(ds), None
    except ModelLoadError:
        if is_dtoolai_model(ds):
            return load_dtoolai_model(ds, model_class=model_class)
        pickles = sorted(r for r in (ds.relpath(i) for i in ds.identifiers) if r.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ModelLoadError(
                f"{ds.uri} has no provenance.json and holds its weights as a pickle ({', '.join(pickles)}) "
                "without dtoolAI's model_name annotation; reprodl refuses to unpickle weights from a URI. "
                "`reprodl provenance` still shows what it recorded"
            ) from None
        raise


def _bounded_shape(shape: list[int], uri: str) -> tuple[int, ...]:
    """A recorded sample shape, refused when it would size an absurd allocation."""
    if any(d <= 0 for d in shape) or int(np.prod(shape, dtype=object)) > keys.MAX_SAMPLE_ELEMENTS:
        raise ModelLoadError(
            f"{uri}: the record's input shape {list(shape)} is not a usable sample shape "
            f"(positive sides, at most {keys.MAX_SAMPLE_ELEMENTS:,} values)"
        )
    return tuple(shape)


def _recorded_encoding(encoding: dict[str, int], uri: str) -> dict[str, int]:
    """The training data's category encoding as the record gives it, checked as a dataset's is
    (labels 0..K-1, each once: a model's outputs are numbered by them)."""
    try:
        return checked_encoding(encoding, uri=f"the record of {uri} (data[0].category_encoding)")
    except DatasetFormatError as exc:
        raise ModelLoadError(str(exc)) from None


def _as_input(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))


def evaluation_report(confusion: np.ndarray, categories: list[str], **extra: Any) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/support and the majority baseline.

    ``confusion[i, j]`` counts samples of true label i predicted as j.
    """
    n = int(confusion.sum())
    correct = int(np.trace(confusion))
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    per_class = {}
    for i, name in enumerate(categories):
        tp = int(confusion[i, i])
        per_class[name] = {
            "precision": tp / int(predicted[i]) if predicted[i] else 0.0,
            "recall": tp / int(support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
    majority = int(support.argmax()) if n else 0
    return {
        **extra,
        "n_samples": n,
        "accuracy": correct / n if n else 0.0,
        "majority_class": categories[majority] if categories else None,
        "majority_baseline_accuracy": int(support.max()) / n if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.astype(int).tolist(),
        "categories": categories,
        "baselines": evaluation_baselines(confusion),
    }
