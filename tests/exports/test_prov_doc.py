"""reprodl.exports.prov_doc: a model as W3C PROV-JSON, read back with prov."""

from __future__ import annotations

from pathlib import Path

from train_fixtures import TrainedModel

from reprodl.exports import export

pytest_plugins = ["train_fixtures"]


def _uuid(model: TrainedModel) -> str:
    from reprodl.store import open_dataset

    return open_dataset(model.uri).uuid


def test_prov_json_reads_back_with_ml_schema_types(trained_model: TrainedModel, tmp_path: Path) -> None:
    import prov
    from prov.model import ProvDocument

    export(trained_model.uri, "prov", tmp_path / "run.json")
    doc = prov.read(str(tmp_path / "run.json"), format="json")
    again = ProvDocument.deserialize(str(tmp_path / "run.json"), format="json")
    assert doc == again
    types = {str(t) for r in doc.get_records() if r.is_element() for t in r.get_asserted_types()}
    assert {"mls:Run", "mls:Data", "mls:Model", "mls:HyperParameterSetting", "mls:ModelEvaluation"} <= types
    ns = {n.prefix: n.uri for n in doc.get_registered_namespaces()}
    assert ns["mls"] == "http://www.w3.org/ns/mls#"
    (model,) = [r for r in doc.get_records() if r.is_element() and "mls:Model" in map(str, r.get_asserted_types())]
    assert str(model.identifier) == f"uuid:{_uuid(trained_model)}"
    assert trained_model.record.digest in {str(v) for _, v in model.attributes}
    export(trained_model.uri, "prov-n", tmp_path / "run.provn")
    text = (tmp_path / "run.provn").read_text()
    assert text.startswith("document") and "prov:type='mls:Run'" in text and "wasGeneratedBy(" in text
