"""Every traced tensor's ``torch.hash_tensor`` in a few calls per step (the step trace's exact digests).

A tensor's digest is ``torch.hash_tensor`` of it: the XOR of every element's value upcast to 64
bits (floats to float64, integers to int64). Hashing a model's tensors and its optimiser's state
tensors one call at a time costs about a microsecond of dispatch per tensor, most of a small
model's trace. Here the small tensors (up to :data:`SMALL` elements, :data:`MAX_GATHERED` in all)
are gathered each step and digested together:

* contiguous CPU tensors of NumPy's dtypes: through NumPy views of them made once, ONE
  ``np.concatenate`` per kind into a float64 (or int64) array (the upcast ``torch.hash_tensor``
  makes), and ONE ``np.bitwise_xor.reduceat`` over it gives every tensor's digest;
* the others (on an accelerator, bfloat16, not contiguous): ONE ``torch._foreach_copy_`` into
  the rows of zero-padded 2-D buffers (by dtype, device and size class), and ONE
  ``torch.hash_tensor(buffer, dim=1)`` per buffer (zeros XOR to nothing).

Either way each digest is the tensor's own ``torch.hash_tensor`` bit for bit: the rows are those
of the tensor-by-tensor computation (:func:`direct_digests`), so traces made either way (older
records' included) compare. Larger tensors are hashed where they are (their dispatch is small
beside their hashing, and a copy would double their memory).

The layout is built from the tensors as found after a step, checked when built (its digests must
equal the direct ones, else the tracer digests tensor by tensor from then on) and checked cheaply
each step: each small parameter's data pointer, each buffer's and optimiser state tensor's
identity, the number of state entries. When it no longer holds (the optimiser made its state, a
state tensor was replaced, a parameter's data swapped, a checkpoint loaded) it is rebuilt; a
training that invalidates it again and again (LBFGS replaces its state tensors every step) is
digested tensor by tensor after :data:`MAX_REBUILDS` rebuilds.

This is the ``exact`` kind's digest (records of format 1.2). The ``words`` kind (the default since
format 1.3) gathers the same tensors through the same checks with its own layout
(:class:`reprodl.training.worddigest.WordLayout`: their bytes, not values widened to 64 bits).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from reprodl.training.digeststage import (
    Digest,
    Found,
    Order,
    Staged,
    mixed_multipliers,
    mixed_np,
    resolve,
)

__all__ = ["Digest", "Staged", "StateDigests", "direct_digests", "mixed", "resolve", "tensor_digest", "zero"]

SMALL = 1 << 14  # elements: a tensor up to this size is gathered each step
MAX_GATHERED = 1 << 22  # elements gathered in all (the copies' memory); tensors past it are hashed where they are
WASTE = 2048  # padding elements a row may add to its buffer (about one hash call's dispatch)
MAX_REBUILDS = 8

_ZEROS: dict[torch.device, torch.Tensor] = {}


def tensor_digest(t: torch.Tensor) -> torch.Tensor:
    """``torch.hash_tensor`` of ``t`` (a 0-d uint64 tensor on its device): exact, any reduction order."""
    try:
        return torch.hash_tensor(t)
    except RuntimeError:  # empty, or complex: checked only then (a check per call costs more than the hash)
        if t.numel() == 0:
            return zero(t.device)
        return torch.hash_tensor(torch.view_as_real(t))


def zero(device: torch.device) -> torch.Tensor:
    """The digest of nothing (0), on ``device``."""
    z = _ZEROS.get(device)
    if z is None:
        z = _ZEROS[device] = torch.zeros((), dtype=torch.uint64, device=device)
    return z


def combined(digests: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One digest of several: each multiplied by a fixed odd number of its position (wrapping), XORed."""
    if len(digests) == 1:
        return digests[0]
    try:
        stacked = torch.stack(list(digests))
    except RuntimeError:  # on several devices (a step count kept on the CPU)
        stacked = torch.stack([d.to(device) for d in digests])
    return mixed(stacked.to(device))


def mixed(stacked: torch.Tensor) -> torch.Tensor:
    """:func:`combined` of a vector of digests (uint64, or viewed as int64; one device)."""
    return torch.hash_tensor(stacked.view(torch.int64) * mixed_multipliers(stacked.numel(), stacked.device))


def optimizer_parts(optimizers: Sequence[torch.optim.Optimizer]) -> list[tuple[dict[Any, Any], Any]]:
    """Every optimiser state entry digested, as (state dict, key), in param-group order: tensors and numbers."""
    parts = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p)
                if state:
                    parts += [(state, k) for k, v in state.items() if isinstance(v, _DIGESTED)]
    return parts


_DIGESTED = (torch.Tensor, int, float)  # the optimiser state entries digested


def _param_states(optimizers: Sequence[torch.optim.Optimizer]) -> list[dict[Any, Any]]:
    """Every parameter's state dict that exists, in param-group order (empty ones included)."""
    return [
        s for opt in optimizers for g in opt.param_groups for p in g["params"] if (s := opt.state.get(p)) is not None
    ]


def number_digest(value: float, device: torch.device) -> torch.Tensor:
    """A number's digest in the optimiser state (a step count kept as a Python number)."""
    return tensor_digest(torch.tensor(float(value), dtype=torch.float64)).to(device)


def direct_digests(
    params: Sequence[torch.Tensor],
    buffers: Sequence[tuple[torch.nn.Module, str]],
    optimizers: Sequence[torch.optim.Optimizer],
    device: torch.device,
    digest: Callable[[torch.Tensor], torch.Tensor] = tensor_digest,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each parameter's then each buffer's digest, the optimisers' state digest), tensor by tensor."""
    digests = [digest(p) for p in params]
    for module, attr in buffers:
        b = module._buffers.get(attr)
        digests.append(digest(b) if b is not None else zero(device))
    parts = []
    for state, key in optimizer_parts(optimizers):
        value = state[key]
        parts.append(digest(value) if isinstance(value, torch.Tensor) else number_digest(value, device))
    model = _stacked(digests, device) if digests else torch.zeros(0, dtype=torch.uint64, device=device)
    return model, combined(parts, device) if parts else zero(device)


def as_numpy(digest: Digest) -> np.ndarray:
    """A digest (or vector of them) as NumPy uint64 on the host."""
    return digest.cpu().numpy() if isinstance(digest, torch.Tensor) else digest


def _stacked(digests: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    try:
        return torch.stack(digests)
    except RuntimeError:  # on several devices
        return torch.stack([d.to(device) for d in digests])


class StateDigests:
    """The model's per-tensor digests and the optimisers' state digest of each step (module docstring)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        buffers: Sequence[tuple[torch.nn.Module, str]],
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        layout: type[_Layout] | None = None,
    ) -> None:
        self.params, self.buffers, self.optimizers, self.device = list(params), list(buffers), list(optimizers), device
        self.layout_class = layout or _Layout  # how the tensors are gathered and digested (the trace's kind)
        self.layout: _Layout | None = None
        self.rebuilds = 0
        self.direct = False

    def __call__(self) -> tuple[Digest, Digest]:
        """(each parameter's then each buffer's digest (uint64 vector), the optimisers' state digest (0-d))."""
        if not self.direct:
            layout = self.layout
            if layout is None or not layout.holds():
                layout = self._rebuild()
            if layout is not None:
                return layout.digests()
        return self._direct()

    def _direct(self) -> tuple[torch.Tensor, torch.Tensor]:
        return direct_digests(self.params, self.buffers, self.optimizers, self.device, self.layout_class.digest)

    def stage(self) -> Staged:
        """This step's digests, or on a CPU-only training each gathered tensor's digest as found (one
        array, made now) to be put in order and mixed with the other steps' at :func:`resolve`."""
        if not self.direct:
            layout = self.layout
            if layout is None or not layout.holds():
                layout = self._rebuild()
            if layout is not None:
                return Found(layout.order_of, layout.found()) if layout.on_host else layout.digests()
        return self._direct()

    def _rebuild(self) -> _Layout | None:
        """A layout of the tensors as they are now (None, and tensor by tensor from now on, when it cannot be)."""
        self.layout = None
        self.rebuilds += 1
        if self.rebuilds > MAX_REBUILDS:
            self.direct = True
            return None
        try:
            layout = self.layout_class(self)
            got = [as_numpy(d) for d in layout.digests()]
        except (RuntimeError, TypeError, ValueError):  # a tensor NumPy or torch cannot gather so: one by one
            self.direct = True
            return None
        want = [as_numpy(d) for d in self._direct()]
        if not all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want)):
            self.direct = True  # the layout's digests differ here from hashing one by one: never faster than right
            return None
        self.layout = layout
        return layout


class _Layout:
    """The traced tensors as found: the small ones gathered each step, the rest hashed where they are."""

    digest = staticmethod(tensor_digest)  # a tensor's digest (:func:`direct_digests` one by one)

    def __init__(self, owner: StateDigests) -> None:
        self.device = owner.device
        self.params = owner.params
        self.buffer_refs = owner.buffers
        self.buffers = [m._buffers.get(a) for m, a in owner.buffers]
        self.optimizers = owner.optimizers
        self.states = [o.state for o in owner.optimizers]
        self.n_states = [len(s) for s in self.states]
        parts = optimizer_parts(owner.optimizers)
        # every parameter's state dict, an empty one or one of no digested entry included: one filled later,
        # or an entry that comes to hold a tensor or number, changes no other count checked here
        self.state_dicts = list({id(s): s for s in _param_states(owner.optimizers)}.values())
        self.n_entries = sum(map(len, self.state_dicts))
        self.others = [(s, k) for s in self.state_dicts for k, v in s.items() if not isinstance(v, _DIGESTED)]
        tensor_parts = [(s, k) for s, k in parts if isinstance(s[k], torch.Tensor)]
        self.part_dicts, self.part_keys = [s for s, _ in tensor_parts], [k for _, k in tensor_parts]
        self.state_tensors = [s[k] for s, k in tensor_parts]
        self.tensor_ids = list(map(id, self.state_tensors))
        self.buffer_ids = list(map(id, self.buffers))
        self.state_ids = list(map(id, self.states))
        self.numbers = [(i, s, k) for i, (s, k) in enumerate(parts) if not isinstance(s[k], torch.Tensor)]
        self.n_parts = len(parts)
        sources: list[torch.Tensor | None] = [*self.params, *self.buffers, *self.state_tensors]
        self.loose: list[int] = []  # hashed where they are
        flat: dict[str, list[int]] = {"f": [], "i": []}
        padded: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        gathered = 0
        for i, t in enumerate(sources):
            if t is not None:
                where = self._placement(t)
                if where is not None:
                    gathered += t.numel()
                    where = where if gathered <= MAX_GATHERED else None
                if where in flat:
                    flat[where].append(i)
                elif where == "padded":
                    padded.setdefault((t.dtype, t.device), []).append(i)
                else:
                    self.loose.append(i)
        position: dict[int, int] = {}
        present = {i: t for i, t in enumerate(sources) if t is not None}
        self._flatten(present, flat, position)
        self._pad(present, padded, position)
        small = {id(sources[i]) for i in position}
        for i in self.loose:  # after every gathered tensor, in order
            position[i] = len(position)
        self._index(sources, position)
        self.small_params = [p for p in self.params if id(p) in small]
        self.pointers = [p.data_ptr() for p in self.small_params]
        self.numels = [p.numel() for p in self.small_params]  # p.data = p.data[:k] keeps the pointer

    def _flatten(self, sources: dict[int, torch.Tensor], flat: dict[str, list[int]], position: dict[int, int]) -> None:
        """CPU tensors: NumPy views of them, concatenated each step into one 64-bit array per kind
        (floats as float64, integers as int64: the values ``torch.hash_tensor`` XORs), digested by segment."""
        self.flat: list[tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]] = []
        for kind, members in flat.items():
            if not members:
                continue
            views = [sources[i].detach().numpy().reshape(-1) for i in members]
            sizes = [v.size for v in views]
            out = np.empty(sum(sizes), dtype=np.float64 if kind == "f" else np.int64)
            offsets = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
            for i in members:
                position[i] = len(position)
            self.flat.append((views, out, out.view(np.uint64), offsets))

    def _pad(self, sources: dict[int, torch.Tensor], padded: dict[Any, list[int]], position: dict[int, int]) -> None:
        """Other small tensors (another device, bfloat16, not contiguous): copied into rows of zero-padded
        buffers each step, one ``torch.hash_tensor(dim=1)`` per buffer (zeros XOR to nothing)."""
        self.bufs: list[torch.Tensor] = []
        self.dst: list[torch.Tensor] = []
        self.dst_sources: list[torch.Tensor] = []
        for (dtype, device), members in padded.items():
            for rows in _size_classes(members, [sources[i].numel() for i in members]):
                buf = torch.zeros(len(rows), sources[rows[0]].numel(), dtype=dtype, device=device)
                for r, i in enumerate(rows):
                    src = sources[i]
                    position[i] = len(position)
                    self.dst.append(buf[r, : src.numel()].view(src.shape))
                    self.dst_sources.append(src)
                self.bufs.append(buf)

    def _index(self, sources: Sequence[torch.Tensor | None], position: dict[int, int]) -> None:
        zero_at = len(position)  # a missing buffer's digest: 0
        self.order = [position.get(i, zero_at) for i in range(len(sources))]
        n_model = len(self.params) + len(self.buffers)
        self.model_np = np.array(self.order[:n_model], dtype=np.int64)
        self.opt_np = np.array(self.order[n_model:], dtype=np.int64)
        self.model_index = torch.from_numpy(self.model_np).to(self.device)
        self.opt_index = torch.from_numpy(self.opt_np).to(self.device)
        self.on_host = self.device.type == "cpu" and not self.numbers
        self.order_of = Order(self.model_np, self.opt_np, self.n_parts, self.order[-1] if self.order else 0)
        n_params, n_buffers = len(self.params), len(self.buffers)
        self.loose_sources = [
            self.buffer_refs[i - n_params] if n_params <= i < n_params + n_buffers else sources[i] for i in self.loose
        ]

    def holds(self) -> bool:
        """Whether the tensors are still those laid out (cheap checks, see the module docstring; ids of objects
        held here cannot be reused by others)."""
        if (
            list(map(_DATA_PTR, self.small_params)) != self.pointers
            or list(map(_NUMEL, self.small_params)) != self.numels
        ):
            return False
        if self.buffers and list(map(id, map(_buffer, self.buffer_refs))) != self.buffer_ids:
            return False
        if (
            list(map(id, map(_STATE, self.optimizers))) != self.state_ids
            or list(map(len, self.states)) != self.n_states
        ):
            return False
        if sum(map(len, self.state_dicts)) != self.n_entries:
            return False
        try:
            now = list(map(id, map(dict.__getitem__, self.part_dicts, self.part_keys)))
        except KeyError:
            return False
        if any(isinstance(s.get(k), _DIGESTED) for s, k in self.others):
            return False
        return now == self.tensor_ids and all(isinstance(s.get(k), (int, float)) for _, s, k in self.numbers)

    def digests(self) -> tuple[Digest, Digest]:
        """(the model's per-tensor digests, the optimisers' state digest) as they are now: NumPy uint64 on a
        CPU-only training, else tensors on the first parameter's device."""
        every = self._gathered()
        if isinstance(every, np.ndarray):
            on_host = every.take(self.model_np)
            if self.n_parts <= 1:
                return on_host, every[self.order[-1]] if self.n_parts else _ZERO_NP
            return on_host, mixed_np(every.take(self.opt_np))
        model = every.index_select(0, self.model_index).view(torch.uint64)
        if not self.n_parts:
            return model, zero(self.device)
        if self.numbers:
            parts = list(every.index_select(0, self.opt_index).view(torch.uint64).unbind())
            for i, state, key in self.numbers:
                parts.insert(i, number_digest(state[key], self.device))
            return model, combined(parts, self.device)
        if self.n_parts == 1:
            return model, every[self.order[-1]].view(torch.uint64)
        return model, mixed(every.index_select(0, self.opt_index))

    def found(self) -> list[np.ndarray]:
        """A host layout's digests as found, in pieces (:meth:`_gathered` but the last concatenation)."""
        found_np, found = self._found()
        return found_np + [f.numpy() for f in found]

    def _gathered(self) -> np.ndarray | torch.Tensor:
        """Every laid-out tensor's digest then 0, by :attr:`order` (NumPy uint64, or int64 on the device)."""
        found_np, found = self._found()
        if self.on_host:
            return np.concatenate([*found_np, *(f.cpu().numpy() for f in found), _ZEROS_NP])
        device = self.device
        pieces = [torch.from_numpy(f).to(device) for f in found_np] + [f.to(device) for f in found]
        return torch.cat([*pieces, zero(device).reshape(1)]).view(torch.int64)  # index_select has no uint64 kernel

    def _found(self) -> tuple[list[np.ndarray], list[torch.Tensor]]:
        """(the digests of the tensors gathered through NumPy, those of the others), in layout order."""
        found_np = []
        for views, out, bits, offsets in self.flat:
            np.concatenate(views, out=out)
            found_np.append(np.bitwise_xor.reduceat(bits, offsets))
        found: list[torch.Tensor] = []
        if self.dst:
            grad = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                torch._foreach_copy_(self.dst, self.dst_sources)
            finally:
                torch._C._set_grad_enabled(grad)
            found += [torch.hash_tensor(b, dim=1) for b in self.bufs]
        if self.loose:
            found.append(torch.stack([self.digest(self._loose(g)) for g in self.loose_sources]))
        return found_np, found

    @staticmethod
    def _loose(getter: Any) -> torch.Tensor:
        if isinstance(getter, tuple):
            module, attr = getter
            return module._buffers[attr]
        return getter

    @staticmethod
    def _placement(t: torch.Tensor) -> str | None:
        """How a tensor is gathered each step: "f"/"i" (a CPU NumPy view), "padded", or None (hashed where it
        is)."""
        if not 0 < t.numel() <= SMALL or t.layout != torch.strided or t.is_complex() or t.dtype == torch.uint64:
            return None
        if t.device.type == "cpu" and t.is_contiguous():
            if t.dtype in _FLOATS:
                return "f"
            if t.dtype in _INTEGERS:
                return "i"
        return "padded"


_DATA_PTR = torch.Tensor.data_ptr
_NUMEL = torch.Tensor.numel
_STATE = operator.attrgetter("state")


def _buffer(ref: tuple[torch.nn.Module, str]) -> torch.Tensor | None:
    return ref[0]._buffers.get(ref[1])


_FLOATS = frozenset({torch.float16, torch.float32, torch.float64})
_INTEGERS = frozenset({torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})
_ZERO_NP = np.zeros((), dtype=np.uint64)
_ZEROS_NP = np.zeros(1, dtype=np.uint64)


def _size_classes(members: list[int], sizes: list[int]) -> list[list[int]]:
    """``members`` in groups of similar size, largest first: a group's rows add at most WASTE padding each."""
    ranked = sorted(zip(sizes, members), key=lambda x: -x[0])
    groups: list[list[int]] = []
    width = 0
    for size, i in ranked:
        if groups and width - size <= WASTE:
            groups[-1].append(i)
        else:
            groups.append([i])
            width = size
    return groups
