"""The paper's workflow across real servers: train from an http:// URI, publish a model over
http, write a model to s3://, and reproduce a model whose data are remote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from remote_servers import *  # noqa: F403 - the server fixtures
from remote_servers import HTTPServer, S3Bucket

from reprodl import (
    DerivedDataSet,
    GenNet,
    Parameters,
    TensorDataSet,
    TrainedTorchModel,
    reproduce,
    train_model_with_metadata_capture,
)
from reprodl.modeldataset.read import load_record

PARAMS = dict(batch_size=64, learning_rate=0.05, n_epochs=1, init_params={"input_channels": 1, "input_dim": 8})


def train(train_ds, base_uri: str, name: str) -> str:
    params = Parameters(**PARAMS)
    torch.manual_seed(params.seed)
    model = GenNet(**params.init_params)
    optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
    with DerivedDataSet(base_uri, name, train_ds) as output_ds:
        train_model_with_metadata_capture(
            model, train_ds, optimiser, torch.nn.NLLLoss(), params, output_ds, progress=False
        )
    assert output_ds.uri is not None
    return output_ds.uri


def digit_image(ds: TensorDataSet, k: int) -> Image.Image:
    return Image.fromarray(np.asarray(ds.data[ds.rows[k]]).reshape(8, 8).astype(np.uint8))


def test_training_straight_from_an_http_uri_records_it_and_reproduces(
    http_server: HTTPServer, dtool_cache, tmp_path: Path
):
    data_uri = http_server.uri("digits")
    train_ds = TensorDataSet(data_uri)
    model_uri = train(train_ds, str(tmp_path), "from-http")

    record = load_record(model_uri)
    assert record.data[0].uri == data_uri
    assert record.data[0].uuid == train_ds.uuid
    report = reproduce(model_uri)
    assert report.verdict == "identical"
    assert report.data_checks[0].uri == data_uri and report.data_checks[0].ok


def test_a_model_published_over_http_loads_and_predicts_like_the_local_one(http_server: HTTPServer, dtool_cache):
    local = TensorDataSet(str(http_server.root / "digits"))
    # Writing into the served directory publishes the model at http://.../<name>.
    local_uri = train(local, str(http_server.root), "served-model")
    remote = TrainedTorchModel(http_server.uri("served-model"))
    here = TrainedTorchModel(local_uri)

    assert remote.provenance.digest == here.provenance.digest
    images = [digit_image(local, k) for k in range(20)]
    assert [remote.convert_and_predict(im) for im in images] == [here.convert_and_predict(im) for im in images]
    assert "GenNet" in remote.get_readme_content()


def test_a_model_written_to_s3_loads_from_its_s3_uri(s3_bucket: S3Bucket, digits_uri: str):
    train_ds = TensorDataSet(digits_uri)
    model_uri = train(train_ds, s3_bucket.base_uri, "on-s3")

    assert model_uri.startswith("s3://")
    model = TrainedTorchModel(model_uri)
    assert any(key.startswith(model.dataset.uuid) for key in s3_bucket.keys())
    assert model.provenance.data[0].uri == train_ds.uri
    prediction = model.convert_and_predict(digit_image(train_ds, 0))
    assert prediction in train_ds.categories


def test_failed_training_to_s3_leaves_the_bucket_empty(s3_bucket: S3Bucket, digits_uri: str):
    train_ds = TensorDataSet(digits_uri)
    params = Parameters(**PARAMS)
    model = GenNet(**params.init_params)
    optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)

    class BrokenLoss(torch.nn.Module):  # a loss of one's own is a module (a bare function is refused up front)
        def forward(self, out, y):
            raise RuntimeError("loss exploded")

    broken_loss = BrokenLoss()

    with pytest.raises(RuntimeError, match="loss exploded"):
        with DerivedDataSet(s3_bucket.base_uri, "broken", train_ds) as output_ds:
            train_model_with_metadata_capture(
                model, train_ds, optimiser, broken_loss, params, output_ds, progress=False
            )
    assert s3_bucket.keys() == []
