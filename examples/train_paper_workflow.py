"""The paper's "Training a Simple Model" and "Using the Model", with reprodl's imports.

Run from the repository root after `make demo` or:
    reprodl dataset create-digits data digits && reprodl dataset split data/digits --test 0.2
    python examples/train_paper_workflow.py data/digits models
"""

import sys

import torch
from PIL import Image

from reprodl import (
    DerivedDataSet,
    GenNet,
    Parameters,
    TensorDataSet,
    TrainedTorchModel,
    train_model_with_metadata_capture,
)

train_dataset_uri, base_uri = sys.argv[1], sys.argv[2]
# momentum is for this script's own optimiser, not a parameter of the built-in trainer: it goes
# under `user` (recorded with the model as given); a bare `momentum=0.9` is refused by the trainer.
params = Parameters(
    batch_size=32,
    learning_rate=0.05,
    n_epochs=5,
    init_params={"input_channels": 1, "input_dim": 8},
    user={"momentum": 0.9},
)

train_ds = TensorDataSet(train_dataset_uri, usetype="train")
model = GenNet(**params.init_params)
loss_fn = torch.nn.NLLLoss()
optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate, momentum=params.user["momentum"])
with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:
    train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)

model = TrainedTorchModel(output_ds.uri)
test_ds = TensorDataSet(train_dataset_uri, usetype="test")
image = Image.fromarray(test_ds.data[test_ds.rows[1]].reshape(8, 8))
print(f"Classified image as {model.convert_and_predict(image)} (label {test_ds.categories[test_ds.labels[1]]})")
print(model.get_readme_content())
