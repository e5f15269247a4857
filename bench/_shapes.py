"""The six training-script shapes of bench_shapes.py, as the scripts a user would write.

Each is a whole script (``python SHAPE.py [--record BASE] [--size N] [--epochs E]``): without
``--record`` it is the plain script and never imports reprodl; with it, the same script adopts
``reprodl.start_run`` (Lightning: ``ReprodlCallback``) with the few lines a user adds. Small
data (random tensors from a seeded generator, or sklearn's digits), one thread. The last line
printed is JSON: ``{"loop_s": the training loop's wall time, "uri": the model written or null}``.
"""

from __future__ import annotations

# Shared head: arguments, one thread, and the run when --record is given.
HEAD = """\
import argparse
import json
import math
import sys
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--record", default=None, help="the base directory of the run (else: no reprodl)")
parser.add_argument("--size", type=int, default=512)
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(1)
run = None
START
g = torch.Generator().manual_seed(1)
"""
START_RUN = """\
if args.record:
    import reprodl

    run = reprodl.start_run(args.record, "shape", seed=0, params=vars(args))
else:
    torch.manual_seed(0)"""

TAIL = """\
loop_s = time.perf_counter() - t0
if run is not None:
    run.save(SAVED)
    run.finish()
print(json.dumps({"loop_s": loop_s, "uri": run.uri if run is not None else None}))
"""


def _script(body: str, saved: str, *, start: str = START_RUN, tail: str = TAIL) -> str:
    return HEAD.replace("START", start) + body + tail.replace("SAVED", saved)


# 1. Two models, two optimisers: a small GAN on 2-D Gaussian blobs.
GAN = _script(
    """\
real_data = torch.randn(args.size, 16, generator=g) * 0.5 + 1.0
G = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 16))
D = nn.Sequential(nn.Linear(16, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
criterion = nn.BCEWithLogitsLoss()
data = torch.utils.data.TensorDataset(real_data)
if run is not None:
    run.watch(G, opt_g, name="generator")
    run.watch(D, opt_d, loss=criterion, name="discriminator")
t0 = time.perf_counter()
loader = run.loader(data, batch_size=16, shuffle=True) if run else torch.utils.data.DataLoader(data, 16, shuffle=True)
for epoch in range(args.epochs):
    for (real,) in loader:
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        D.zero_grad()
        fake = G(torch.randn(len(real), 8))
        loss_d = criterion(D(real), ones) + criterion(D(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        G.zero_grad()
        loss_g = criterion(D(fake), ones)
        loss_g.backward()
        opt_g.step()
""",
    '{"generator": G, "discriminator": D}',
)

# 2. A hand-written update, no optimiser: an LSTM language model, lr divided by 4 in the loop.
LSTM_LM = _script(
    """\
VOCAB = 50
tokens = torch.randint(0, VOCAB, (args.size, 21), generator=g)
data = torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.out = nn.Linear(64, VOCAB)

    def forward(self, x):
        return self.out(self.lstm(self.embed(x))[0])


model = LM()
lr = 1.0
if run is not None:
    run.watch(model, loss=nn.CrossEntropyLoss())
t0 = time.perf_counter()
loader = run.loader(data, batch_size=16, shuffle=True) if run else torch.utils.data.DataLoader(data, 16, shuffle=True)
for epoch in range(args.epochs):
    for x, y in loader:
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
    lr /= 4.0
""",
    "model",
)

# 3. A closure optimiser: LBFGS on sklearn's digits.
LBFGS = _script(
    """\
from sklearn.datasets import load_digits

digits = load_digits()
x_all = torch.tensor(digits.data[: args.size], dtype=torch.float32) / 16.0
y_all = torch.tensor(digits.target[: args.size])
data = torch.utils.data.TensorDataset(x_all, y_all)
model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
loss_fn = nn.CrossEntropyLoss()
if run is not None:
    run.watch(model, optimizer, loss=loss_fn)
t0 = time.perf_counter()
loader = run.loader(data, batch_size=64, shuffle=True) if run else torch.utils.data.DataLoader(data, 64, shuffle=True)
for epoch in range(args.epochs):
    for x, y in loader:

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)
""",
    "model",
)

# 4. nanoGPT-like: a tiny causal transformer, gradient accumulation, bf16 autocast, lr set by hand, clipping.
NANOGPT = _script(
    """\
VOCAB, BLOCK, ACCUMULATE = 40, 16, 2
tokens = torch.randint(0, VOCAB, (args.size, BLOCK + 1), generator=g)
data = torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, 32)
        self.pos = nn.Parameter(torch.zeros(BLOCK, 32))
        self.block = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(BLOCK))

    def forward(self, x):
        return self.head(self.block(self.tok(x) + self.pos, src_mask=self.mask, is_causal=True))


model = TinyGPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
if run is not None:
    run.watch(model, optimizer, loss=nn.CrossEntropyLoss())
t0 = time.perf_counter()
loader = run.loader(data, batch_size=8, shuffle=True) if run else torch.utils.data.DataLoader(data, 8, shuffle=True)
total = args.epochs * len(loader) // ACCUMULATE
it = 0
for epoch in range(args.epochs):
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)) / ACCUMULATE
        loss.backward()
        if (i + 1) % ACCUMULATE == 0:
            lr = 1e-3 * min(1.0, (it + 1) / 5) * 0.5 * (1 + math.cos(math.pi * it / max(total, 1)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            it += 1
""",
    "model",
)

# 5. Lightning with manual optimisation: a GAN's two optimisers stepped in training_step.
LIGHTNING = _script(
    """\
import warnings

import lightning as L

warnings.filterwarnings("ignore", ".*does not have many workers.*")


class ManualGAN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 16))
        self.discriminator = nn.Sequential(nn.Linear(16, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.generator(torch.randn(len(real), 8))
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

    def configure_optimizers(self):
        return [
            torch.optim.Adam(self.generator.parameters(), lr=2e-3, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999)),
        ]


callbacks = []
if args.record:  # Lightning records through its callback
    from reprodl.integrations.lightning import ReprodlCallback

    callbacks.append(ReprodlCallback(args.record, "shape", params=vars(args)))
L.seed_everything(0, verbose=False)
data = torch.utils.data.TensorDataset(torch.randn(args.size, 16, generator=g) * 0.5 + 1.0)
trainer = L.Trainer(
    max_epochs=args.epochs,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=callbacks,
)
model = ManualGAN()
t0 = time.perf_counter()
trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=16, shuffle=True))
""",
    "",
    start="",
    tail="""\
loop_s = time.perf_counter() - t0
print(json.dumps({"loop_s": loop_s, "uri": callbacks[0].uri if callbacks else None}))
""",
)

# 6. An IterableDataset: a stream of in-memory samples in its own seeded order.
ITERABLE = _script(
    """\
class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y, seed):
        self.x, self.y, self.seed, self.epoch = x, y, seed, 0

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        for i in order.tolist():
            yield self.x[i], self.y[i]


x_all = torch.randn(args.size, 64, generator=g)
y_all = (x_all[:, :10].argmax(1) + (x_all[:, 10] > 0).long()) % 10
stream = Stream(x_all, y_all, seed=5)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
if run is not None:
    run.watch(model, optimizer, loss=loss_fn)
t0 = time.perf_counter()
loader = run.loader(stream, batch_size=16) if run else torch.utils.data.DataLoader(stream, batch_size=16)
for epoch in range(args.epochs):
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
""",
    "model",
)

SHAPES: dict[str, str] = {
    "gan": GAN,
    "lstm_lm": LSTM_LM,
    "lbfgs": LBFGS,
    "nanogpt": NANOGPT,
    "lightning_manual": LIGHTNING,
    "iterable": ITERABLE,
}
