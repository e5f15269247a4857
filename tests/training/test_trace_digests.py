"""The step trace's exact digests, made a few calls per step (reprodl.training.statedigest).

Each step's row must be what hashing every tensor one by one gives (traces made before compare),
and a change of one ulp in one element of any parameter or optimiser state tensor, small or
large, must change the row of the step it happened at. Every test runs for both digest kinds:
``words`` (the default) and ``exact`` (records before it, re-run in their own kind).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reprodl.training import statedigest
from reprodl.training import trace as trace_module
from reprodl.training.statedigest import SMALL, as_numpy, direct_digests
from reprodl.training.trace import StepTracer
from reprodl.training.worddigest import inputs_digest, word_digest


@pytest.fixture(autouse=True, params=["words", "exact"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(trace_module, "KIND", request.param)  # the tracers made here trace this kind
    return str(request.param)


class _Net(torch.nn.Module):
    """Small and large tensors (the large one over SMALL elements), a BatchNorm's buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.small = torch.nn.Linear(8, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.large = torch.nn.Linear(16, SMALL // 16 + 8)
        self.head = torch.nn.Linear(SMALL // 16 + 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.large(self.norm(self.small(x)))))


def _train(
    opt_name: str, steps: int, *, direct: bool = False, on_step=None, dtype: torch.dtype = torch.float32
) -> tuple[np.ndarray, StepTracer]:
    torch.manual_seed(0)
    model = _Net().to(dtype)
    if opt_name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif opt_name == "lbfgs":
        opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tracer = StepTracer(model, optimizers=[opt], on_step=on_step)
    tracer._state.direct = direct
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x, y = torch.randn(4, 8, generator=g).to(dtype), torch.randint(0, 3, (4,), generator=g)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure) if opt_name == "lbfgs" else (closure(), opt.step())[0]
        tracer.batch(indices=torch.arange(4 * i, 4 * i + 4), inputs=x)
        tracer.step(loss=loss, epoch=1, batch=i + 1)
    return tracer.rows(), tracer


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "lbfgs"])
def test_the_rows_are_those_of_hashing_every_tensor_one_by_one(opt_name: str) -> None:
    fast, tracer = _train(opt_name, 5)
    direct, _ = _train(opt_name, 5, direct=True)
    assert len(fast) == 5
    assert fast.tobytes() == direct.tobytes()
    assert (fast["optimizer"] != 0).all()
    if opt_name != "lbfgs":  # LBFGS replaces its state tensors every step: digested one by one
        assert tracer._state.layout is not None and not tracer._state.direct


def test_the_layout_holds_small_tensors_and_hashes_large_ones_where_they_are() -> None:
    _, tracer = _train("sgd", 2)
    layout = tracer._state.layout
    assert layout is not None
    sizes = sorted(v.nbytes for views, *_ in layout.flat for v in views)
    assert sizes and max(sizes) <= 4 * SMALL  # float32
    assert len(layout.loose) == 2  # the large weight and its momentum buffer


def _flip_one_ulp(t: torch.Tensor, index: int) -> None:
    flat = t.detach().view(-1)
    flat[index] = torch.nextafter(flat[index], torch.tensor(float("inf")))


@pytest.mark.parametrize(
    ("where", "column"),
    [
        ("large.weight", "large.weight"),
        ("small.bias", "small.bias"),
        ("norm.running_var", "norm.running_var"),
        ("momentum of large.weight", "optimizer"),
        ("momentum of small.weight", "optimizer"),
    ],
)
def test_one_ulp_in_one_element_changes_the_digest_of_that_step(where: str, column: str) -> None:
    _, tracer = _train("sgd", 3)
    model_tensors = dict(zip(tracer.names, [*tracer._params, *(m._buffers[a] for m, a in tracer._buffers)]))
    opt = tracer._optimizers[0]
    if where.startswith("momentum of "):
        target = opt.state[model_tensors[where.removeprefix("momentum of ")]]["momentum_buffer"]
    else:
        target = model_tensors[where]
    before_model, before_opt = _digests(tracer)
    _flip_one_ulp(target, target.numel() - 7)
    after_model, after_opt = _digests(tracer)
    assert _equal((after_model, after_opt), _direct(tracer))
    if column == "optimizer":
        assert after_opt != before_opt
        assert np.array_equal(after_model, before_model)
    else:
        changed = np.flatnonzero(after_model != before_model).tolist()
        assert changed == [tracer.names.index(column)]
        assert after_opt == before_opt


def _digests(tracer: StepTracer) -> tuple[np.ndarray, np.ndarray]:
    model, opt = tracer._state()
    return as_numpy(model), as_numpy(opt)


def _direct(tracer: StepTracer) -> tuple[np.ndarray, np.ndarray]:
    model, opt = direct_digests(tracer._params, tracer._buffers, tracer._optimizers, tracer._device, tracer.digest)
    return as_numpy(model), as_numpy(opt)


def _equal(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return all(np.array_equal(x, y) and x.dtype == y.dtype == np.uint64 for x, y in zip(a, b))


def test_a_parameter_whose_data_is_swapped_or_state_reloaded_is_still_digested_as_it_is() -> None:
    _, tracer = _train("adam", 2)
    p = tracer._params[1]  # small.bias: in the layout
    p.data = p.data.clone() + 1
    opt = tracer._optimizers[0]
    opt.load_state_dict(opt.state_dict())  # new state tensors
    assert _equal(_digests(tracer), _direct(tracer))
    assert tracer._state.layout is not None and tracer._state.rebuilds == 2


def test_a_parameter_cut_to_a_view_at_the_same_address_is_digested_as_it_is() -> None:
    """``p.data = p.data[:k]`` keeps the data pointer; the layout must not digest the old elements."""
    _, tracer = _train("sgd", 2)
    p = tracer._params[1]  # small.bias: in the layout
    p.data = p.data[: p.numel() // 2]
    assert _equal(_digests(tracer), _direct(tracer))


def test_a_layout_that_disagrees_with_hashing_one_by_one_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = np.bitwise_xor

    class OffByOne:  # np.bitwise_xor whose segment digests are wrong
        reduce = real.reduce

        @staticmethod
        def reduceat(*args: object, **kwargs: object) -> np.ndarray:
            return real.reduceat(*args, **kwargs) + np.uint64(1)

    monkeypatch.setattr(statedigest.np, "bitwise_xor", OffByOne)
    fast, tracer = _train("sgd", 3)
    monkeypatch.setattr(statedigest.np, "bitwise_xor", real)
    direct, _ = _train("sgd", 3, direct=True)
    assert tracer._state.direct
    assert fast.tobytes() == direct.tobytes()


def test_tensors_numpy_cannot_view_are_hashed_in_padded_rows_with_the_same_digests(kind: str) -> None:
    fast, tracer = _train("sgd", 4, dtype=torch.bfloat16)
    direct, _ = _train("sgd", 4, direct=True, dtype=torch.bfloat16)
    layout = tracer._state.layout
    assert layout is not None
    if kind == "exact":  # NumPy has no bfloat16 (the flat part: the BatchNorm step count, int64)
        assert layout.bufs
    else:  # their bytes are gathered as any other dtype's
        assert not layout.bufs and layout.flat
    assert fast.tobytes() == direct.tobytes()


def test_rows_kept_in_chunks_and_thinned_are_those_kept_one_by_one() -> None:
    for max_rows in (4, 7):
        chunked, _ = _train_bounded(max_rows, on_step=None)
        one_by_one, _ = _train_bounded(max_rows, on_step=lambda row: False)
        assert chunked.tobytes() == one_by_one.tobytes()
        assert (
            len(chunked) < 30
            and chunked["step"][0] == 1
            and list(chunked["step"][:max_rows]) == [*range(1, max_rows + 1)]
        )


def _train_bounded(max_rows: int, *, on_step) -> tuple[np.ndarray, StepTracer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    tracer = StepTracer(model, on_step=on_step)
    tracer.max_rows = max_rows
    tracer._chunk = 5
    for i in range(30):
        with torch.no_grad():
            model.weight.add_(1.0)
        tracer.step(loss=float(i), epoch=1, batch=i + 1)
    return tracer.rows(), tracer


def test_the_lr_as_applied_is_noted_at_each_change_only_a_tensor_lr_changed_in_place_included() -> None:
    from reprodl.training.components import ComponentWatcher

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.5), foreach=False)
    watcher = ComponentWatcher(on_step=lambda: None)
    watched = watcher.add(model, [opt], name="m")
    try:
        for step in range(1, 7):
            if step == 3:
                opt.param_groups[0]["lr"].fill_(0.25)  # in place: the same tensor, a new version
            if step == 5:
                opt.param_groups[0]["lr"] = 0.125
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
    finally:
        watcher.close()  # torch's clipping functions given back
    entries = watched.optimizers[0].applied.entries
    assert [(e.step, e.values["lr"]) for e in entries if "lr" in e.values] == [(1, 0.5), (3, 0.25), (5, 0.125)]
    assert entries[0].values["momentum"] == 0
    accumulation = watched.accumulation_changes.entries
    assert watched.steps == 6 and [(e.step, e.values) for e in accumulation] == [(1, {"backward_passes": 1})]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_digests_gathered_on_an_accelerator_are_those_of_hashing_one_by_one(opt_name: str) -> None:
    _, tracer = _train(opt_name, 2)
    layout = tracer._state.layout
    assert layout is not None and layout.on_host
    layout.on_host = False  # the path of a model on an accelerator: tensors, index_select, torch.hash_tensor
    model, opt = tracer._state()
    assert isinstance(model, torch.Tensor) and isinstance(opt, torch.Tensor)
    assert _equal((as_numpy(model), as_numpy(opt)), _direct(tracer))


def test_a_layout_that_cannot_be_built_leaves_the_tracer_hashing_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot gather")

    monkeypatch.setattr(statedigest._Layout, "__init__", refuse)
    fast, tracer = _train("sgd", 3)
    direct, _ = _train("sgd", 3, direct=True)
    assert tracer._state.direct and tracer._state.layout is None
    assert fast.tobytes() == direct.tobytes()


@pytest.mark.parametrize("change", ["filled", "none_to_tensor"])
def test_optimizer_state_that_appears_in_a_dict_already_there_is_digested(change: str) -> None:
    """A parameter's state dict that was there but empty (``optimizer.state[p]`` read for a frozen
    parameter) and later filled, or an entry that held no tensor and later holds one, changes no count
    the layout checked: its digest must still be the one-by-one digest."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    digests = statedigest.StateDigests(params, [], [opt], torch.device("cpu"))
    last = params[-1]
    if change == "filled":
        last.requires_grad_(False)
        opt.state[last]  # reading the defaultdict leaves an empty dict there
    for step in range(4):
        if step == 2 and change == "filled":
            last.requires_grad_(True)
        loss = model(torch.randn(8, 4)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if change == "none_to_tensor":
            opt.state[params[0]]["extra"] = None if step < 2 else torch.full((3,), float(step))
        got = [as_numpy(d) for d in digests()]
        want = [as_numpy(d) for d in direct_digests(params, [], [opt], torch.device("cpu"))]
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), f"step {step}"


def test_rows_buffered_across_layouts_are_put_together_as_each_step_found_them() -> None:
    """The host layout's digests are put in order at flush: steps of a layout since replaced (a parameter's
    data swapped for a view NumPy cannot gather, the optimiser's state reloaded) keep their own order."""

    def train(direct: bool) -> np.ndarray:
        torch.manual_seed(0)
        model = _Net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tracer = StepTracer(model, optimizers=[opt])
        tracer._state.direct = direct
        g = torch.Generator().manual_seed(1)
        for i in range(9):
            x, y = torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if i == 3:  # not contiguous: gathered in a padded row from now on (the layout's order changes)
                bias = model.small.bias.data + 1
                model.small.bias.data = torch.stack([bias, bias], 1)[:, 0]
            if i == 6:
                opt.load_state_dict(opt.state_dict())
            tracer.batch(indices=torch.arange(i, i + 4), inputs=x)
            tracer.step(loss=None, epoch=1, batch=i + 1)
        assert tracer._values and len(tracer._values) == 9  # all still buffered: put together at rows()
        return tracer.rows()

    fast, direct = train(False), train(True)
    assert fast.tobytes() == direct.tobytes()
    assert len({r.tobytes() for r in fast["digest"]}) == 9


def _words_reference(t: torch.Tensor) -> int:
    """The XOR of a tensor's bytes (C order) as little-endian 64-bit words, the last zero-padded."""
    data = bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).tolist())
    data += bytes(-len(data) % 8)
    out = 0
    for i in range(0, len(data), 8):
        out ^= int.from_bytes(data[i : i + 8], "little")
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(7),  # float32, odd: the last word padded
        lambda: torch.randn(3, 5, dtype=torch.float64),
        lambda: torch.randn(5, dtype=torch.bfloat16),
        lambda: torch.tensor([True, False, True]),
        lambda: torch.arange(-9, 4, dtype=torch.int8),
        lambda: torch.randn(3, dtype=torch.complex64),
        lambda: torch.randn(4, 6).t(),  # not contiguous
        lambda: torch.randn(5, 8)[:, 2:6],  # rows apart, each contiguous: its int64 view pairs them as C order does
        lambda: torch.arange(9, dtype=torch.int32)[1:6],  # at an offset no int64 view has
        lambda: torch.zeros(0),
    ],
)
def test_a_words_digest_is_the_xor_of_the_tensors_bytes_as_words(make) -> None:
    t = make()
    want = _words_reference(t)
    assert int(word_digest(t).item()) == want
    assert int(inputs_digest(t).item()) == want


def test_one_ulp_anywhere_in_a_tensor_changes_its_words_digest() -> None:
    t = torch.randn(13)
    before = int(word_digest(t).item())
    for i in range(t.numel()):
        u = t.clone()
        _flip_one_ulp(u, i)
        assert int(word_digest(u).item()) != before


def test_a_checkpoint_of_the_exact_kind_resumes_in_its_kind() -> None:
    """A checkpoint written before the words kind (its counters name no kind: exact rows) resumes in that
    kind: the resumed steps' rows are those of a tracer of the exact kind throughout."""

    def steps(tracer: StepTracer, model: torch.nn.Module, first: int, last: int) -> None:
        for i in range(first, last):
            with torch.no_grad():
                model.weight.add_(0.5)
            tracer.step(loss=float(i), epoch=1, batch=i + 1)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = copy.deepcopy(model.state_dict())
    whole = StepTracer(model, kind="exact")
    steps(whole, model, 0, 6)
    model.load_state_dict(start)
    before = StepTracer(model, kind="exact")
    steps(before, model, 0, 3)
    kept, tail, counters = before.state()
    del counters["kind"]  # as a checkpoint written before the words kind
    resumed = StepTracer(model, kind="words")  # today's default kind
    resumed.restore(kept, tail, counters)
    assert resumed.kind == "exact"
    steps(resumed, model, 3, 6)
    assert resumed.rows().tobytes() == whole.rows().tobytes()


@pytest.mark.parametrize("named", ["sampled", "bogus", 7])
def test_a_checkpoint_naming_another_kind_is_not_taken_at_its_word(named: object) -> None:
    """A checkpoint's counters are anyone's JSON: a kind other than words or exact changes nothing, and rows
    of another layout are refused with the layouts named, the tracer left as it was."""
    model = torch.nn.Linear(3, 2)
    source = StepTracer(model, kind="exact")
    source.step(loss=1.0)
    kept, tail, counters = source.state()
    counters["kind"] = named
    tracer = StepTracer(model, kind="words")
    with pytest.raises(ValueError, match="the checkpoint's step trace has rows of"):
        tracer.restore(kept, tail, counters)
    assert tracer.kind == "words" and tracer.n_steps == 0
