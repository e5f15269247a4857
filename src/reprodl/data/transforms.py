"""Preprocessing and augmentation that a provenance record can rebuild.

Each transform here has ``config()``, a JSON-able dict with a ``"name"`` key, and
:func:`from_config` builds it again from that dict. A dataset read through one records the
config (``DataRef.transform``), so :func:`reprodl.reproduction.pipeline.reproduce` re-runs the training with the
same preprocessing and :class:`reprodl.TrainedTorchModel` prepares images for prediction as
the training did. :func:`from_config` knows only the names below: it never imports what a
config names, so a record from a URI cannot make reprodl run code. Transforms of your own
still work for training; reproducing such a model needs ``reproduce(uri, transforms={...})``.

Inputs: :class:`Resize` and :class:`ToTensor` take PIL images (what
:class:`~reprodl.data.datasets.ImageDataSet` hands its transform); :class:`Normalize`,
:class:`CenterCrop`, :class:`RandomCrop` and :class:`GaussianNoise` take one sample as a
(C, H, W) tensor (what :class:`~reprodl.data.datasets.TensorDataSet` hands its transform);
:class:`RandomHorizontalFlip` takes either. Sizes: :class:`Resize` takes (width, height),
as ``ImageDataSet(size=)`` and Pillow do; the crops take (height, width), as a tensor's shape.

Randomness: the random transforms draw from torch's global generator (``torch.rand``,
``torch.randint``, ``torch.randn``), a fixed number of draws per sample whatever the
outcome. reprodl's training seeds that generator before the first epoch, and its DataLoader
seeds it in each worker (``worker_init_fn``), so a seeded training with these transforms is
bitwise reproducible. Outside reprodl's training, call ``torch.manual_seed`` yourself.

Example:
    >>> from reprodl.data.transforms import Compose, GaussianNoise, Normalize, from_config
    >>> t = Compose([Normalize([0.5], [0.25]), GaussianNoise(0.05)])
    >>> from_config(t.config()) == t
    True
    >>> t.eval_view()
    Compose([Normalize(mean=[0.5], std=[0.25])])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from reprodl import keys, trust
from reprodl.data._transform_args import (
    _fits,
    _floats,
    _is_image,
    _need_image,
    _need_tensor,
    _pair,
    _per_channel,
    _probability,
)
from reprodl.errors import ReprodlError, TransformError

__all__ = [
    "CenterCrop",
    "Compose",
    "GaussianNoise",
    "Identity",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "Transform",
    "eval_view",
    "from_config",
    "from_description",
]


class Transform:
    """Base class: a callable with a config that :func:`from_config` rebuilds.

    Methods to override: ``__call__`` and ``_args`` (the constructor's arguments as JSON
    values); a random transform sets ``random = True`` and overrides :meth:`eval_view`.
    """

    name: ClassVar[str] = ""
    random: ClassVar[bool] = False

    def __call__(self, x: Any) -> Any:
        raise NotImplementedError

    def _args(self) -> dict[str, Any]:
        return {}

    def config(self) -> dict[str, Any]:
        """A JSON-able dict with ``name`` and the constructor's arguments."""
        return {"name": self.name, **self._args()}

    def eval_view(self) -> Transform:
        """The deterministic part, for evaluation and prediction (random ones drop out)."""
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and type(other) is type(self) and other.config() == self.config()

    __hash__ = None  # type: ignore[assignment]  # unhashable (equal by config), as Python makes any class with __eq__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._args().items())})"


class Identity(Transform):
    """Returns its input: what a random transform becomes in :meth:`Transform.eval_view`."""

    name = "Identity"

    def __call__(self, x: Any) -> Any:
        return x


class Compose(Transform):
    """Apply ``transforms`` in order. Members need not be reprodl's (then the config names
    their class, and :func:`from_config` refuses to rebuild it)."""

    name = "Compose"

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise TransformError(f"Compose takes a list of transforms, but got transforms={transforms!r}")
        for t in transforms:
            if not callable(t):
                raise TransformError(f"Compose members must be callable, but got {t!r}")
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "transforms": [_member_config(t) for t in self.transforms]}

    def eval_view(self) -> Compose:
        """Members' eval views; random members drop out, members of your own stay as they are
        (unless they have an ``eval_view()`` method of their own)."""
        kept = [eval_view(t) for t in self.transforms]
        return Compose([t for t in kept if not isinstance(t, Identity)])

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(t) for t in self.transforms)}])"


class Resize(Transform):
    """Resize a PIL image to ``size`` = (width, height) (an int: square), BILINEAR.

    Deterministic: :func:`reprodl.data.images.resize`, the resize ImageDataSet uses.
    """

    name = "Resize"

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "Resize", "size")

    def __call__(self, image: Any) -> Any:
        from reprodl.data.images import resize

        _need_image(image, self)
        return resize(image, self.size)

    def _args(self) -> dict[str, Any]:
        return {"size": list(self.size)}


class ToTensor(Transform):
    """A PIL image as a float32 (C, H, W) tensor in [0, 1].

    ``mode`` ("L", "RGB", "RGBA") converts first, as :func:`reprodl.data.images.to_array`
    does (16-bit images scaled, not clipped); None keeps an image already in one of those
    modes and converts others to "L" (gray) or "RGB" (colour).
    """

    name = "ToTensor"

    def __init__(self, mode: str | None = None) -> None:
        if mode is not None:
            from reprodl.data.images import channels_for_mode

            channels_for_mode(mode)
        self.mode = mode

    def __call__(self, image: Any) -> torch.Tensor:
        from reprodl.data.images import target_mode_for, to_array

        _need_image(image, self)
        mode = self.mode or (image.mode if image.mode in ("L", "RGB", "RGBA") else target_mode_for(image.mode))
        return torch.from_numpy(to_array(image, mode))

    def _args(self) -> dict[str, Any]:
        return {"mode": self.mode}


class Normalize(Transform):
    """``(x - mean) / std`` per channel of a (C, H, W) tensor; one value applies to all."""

    name = "Normalize"

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _floats(mean, "Normalize", "mean")
        self.std = _floats(std, "Normalize", "std")
        if any(s == 0.0 for s in self.std):
            raise TransformError(f"Normalize divides by std, so it cannot be zero, but got std={list(self.std)}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise TransformError(
                f"Normalize needs as many means as stds (one per channel), but got "
                f"mean={list(self.mean)} and std={list(self.std)}"
            )
        # One value: a 0-d tensor, so a sample keeps its shape whatever its dimensions.
        self._mean, self._std = _per_channel(self.mean), _per_channel(self.std)

    def __call__(self, x: Any) -> torch.Tensor:
        x = _need_tensor(x, self)
        n = max(len(self.mean), len(self.std))
        if n != 1 and (x.dim() < 3 or x.shape[-3] != n):
            raise TransformError(
                f"Normalize has {n} channel values but got a sample of shape {tuple(x.shape)}; "
                "it takes one (C, H, W) sample with C matching mean and std"
            )
        return (x - self._mean) / self._std

    def _args(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}


class CenterCrop(Transform):
    """The central ``size`` = (height, width) (an int: square) of a (..., H, W) tensor.

    Deterministic; what :class:`RandomCrop` becomes in an eval view.
    """

    name = "CenterCrop"

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "CenterCrop", "size")

    def __call__(self, x: Any) -> torch.Tensor:
        x = _need_tensor(x, self)
        h, w = _fits(x, self.size, self)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        return x[..., top : top + h, left : left + w]

    def _args(self) -> dict[str, Any]:
        return {"size": list(self.size)}


class RandomCrop(Transform):
    """A random ``size`` = (height, width) window of a (..., H, W) tensor, zero-padded by
    ``padding`` on every side first. Two draws per sample (top, then left)."""

    name = "RandomCrop"
    random = True

    def __init__(self, size: int | Sequence[int], padding: int = 0) -> None:
        self.size = _pair(size, "RandomCrop", "size")
        if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding <= keys.MAX_IMAGE_SIDE:
            raise TransformError(
                f"RandomCrop padding should be an integer from 0 to {keys.MAX_IMAGE_SIDE}, but got padding={padding!r}"
            )
        self.padding = padding

    def __call__(self, x: Any) -> torch.Tensor:
        x = _need_tensor(x, self)
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))
        h, w = _fits(x, self.size, self)
        top = int(torch.randint(0, x.shape[-2] - h + 1, (1,)))
        left = int(torch.randint(0, x.shape[-1] - w + 1, (1,)))
        return x[..., top : top + h, left : left + w]

    def eval_view(self) -> Transform:
        return CenterCrop(self.size)

    def _args(self) -> dict[str, Any]:
        return {"size": list(self.size), "padding": self.padding}


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``: a (..., H, W) tensor or a PIL image.
    One draw per sample."""

    name = "RandomHorizontalFlip"
    random = True

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p)

    def __call__(self, x: Any) -> Any:
        flip = float(torch.rand(1)) < self.p
        if isinstance(x, torch.Tensor):
            return x.flip(-1) if flip else x
        if _is_image(x):
            from PIL import Image

            return x.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else x
        raise TransformError(f"RandomHorizontalFlip takes a tensor or a PIL image, but got {type(x).__name__}")

    def eval_view(self) -> Transform:
        return Identity()

    def _args(self) -> dict[str, Any]:
        return {"p": self.p}


class GaussianNoise(Transform):
    """Add normal noise of standard deviation ``std`` to a tensor (one draw per element)."""

    name = "GaussianNoise"
    random = True

    def __init__(self, std: float) -> None:
        self.std = float(std)
        if not self.std >= 0.0:
            raise TransformError(f"GaussianNoise std should be >= 0, but got std={std!r}")

    def __call__(self, x: Any) -> torch.Tensor:
        x = _need_tensor(x, self)
        return x + torch.randn(x.shape, dtype=x.dtype) * self.std

    def eval_view(self) -> Transform:
        return Identity()

    def _args(self) -> dict[str, Any]:
        return {"std": self.std}


_REGISTRY: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (
        Identity,
        Compose,
        Resize,
        ToTensor,
        Normalize,
        CenterCrop,
        RandomCrop,
        RandomHorizontalFlip,
        GaussianNoise,
    )
}


def from_config(config: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Transform:
    """The transform a ``config()`` describes; a list of configs becomes a :class:`Compose`.

    Only reprodl's own names are known: a config that names anything else is refused
    (:class:`TransformError`), never imported.

    Example:
        >>> from_config([{"name": "ToTensor", "mode": "L"}, {"name": "Normalize", "mean": [0.5], "std": [0.5]}])
        Compose([ToTensor(mode='L'), Normalize(mean=[0.5], std=[0.5])])
    """
    if isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
        return Compose([from_config(c) for c in config])
    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise TransformError(
            f"a transform config is a mapping with a 'name' (one of {sorted(_REGISTRY)}), but got {config!r}"
        )
    name = config["name"]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise TransformError(
            f"{name!r} is not one of reprodl's transforms ({', '.join(sorted(_REGISTRY))}), and reprodl never "
            "imports what a config names"
        )
    args = {k: v for k, v in config.items() if k != "name"}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise TransformError(f"the {name} config has unknown arguments {unknown}; it takes {accepted}")
    if cls is Compose:
        members = args.get("transforms")
        if not isinstance(members, Sequence) or isinstance(members, (str, bytes)):
            raise TransformError(f"the Compose config needs 'transforms': a list of configs, but got {members!r}")
        return Compose([from_config(c) for c in members])
    try:
        return cls(**args)
    except TypeError as exc:
        raise TransformError(
            f"the {name} config {dict(config)} does not fit {name}({', '.join(accepted)}): {exc}"
        ) from None


_LEGACY_MODULE = "reprodl.transforms"


def from_description(description: Mapping[str, Any]) -> Transform:
    """Rebuild the transform of a record's ``DataRef.transform`` (``class``, ``repr``, ``config``).

    Only a transform of this module recorded with its config is rebuilt, and it must give
    the recorded config back; anything else raises :class:`TransformError` naming the class.
    """
    cls_path = str(description.get("class"))
    if cls_path.startswith(_LEGACY_MODULE + "."):  # records written before transforms moved into reprodl.data
        cls_path = __name__ + cls_path[len(_LEGACY_MODULE) :]
    config = description.get("config")
    try:
        cls = trust.resolve(cls_path, trust.Kind.TRANSFORM)
    except ReprodlError as exc:
        raise TransformError(f"{cls_path} is not one of reprodl's transforms ({exc})") from None
    qualname = cls.__qualname__
    if _REGISTRY.get(qualname) is not cls:
        raise TransformError(f"{cls_path} is not one of reprodl's transforms")
    if not isinstance(config, Mapping):
        raise TransformError(f"the record describes a {cls_path} without its config, so it cannot be rebuilt")
    if config.get("name") != qualname:
        raise TransformError(f"the record's {cls_path} has the config of a {config.get('name')!r}")
    transform = from_config(config)
    if transform.config() != dict(config):
        raise TransformError(
            f"the record's {cls_path} config {dict(config)} rebuilds as {transform.config()}: "
            "this version of reprodl reads it differently"
        )
    return transform


def eval_view(transform: Callable[[Any], Any] | None) -> Any:
    """``transform.eval_view()`` when it has one (random augmentations dropped), else itself."""
    view = getattr(transform, "eval_view", None)
    return view() if callable(view) else transform


def contains(transform: Any, kind: type) -> bool:
    """Whether ``transform`` is, or is a Compose holding (at any depth), an instance of ``kind``."""
    if isinstance(transform, kind):
        return True
    return isinstance(transform, Compose) and any(contains(t, kind) for t in transform.transforms)


def _member_config(t: Any) -> dict[str, Any]:
    """A Compose member's config; one not of this module is named by its class (and repr)."""
    if isinstance(t, Transform) and _REGISTRY.get(type(t).name) is type(t):
        return t.config()
    return {"name": f"{type(t).__module__}.{type(t).__qualname__}", "repr": repr(t)}
