"""Issue 8.6: reprodl's fast broker lookup is its own; dtoolcore is never patched.

reprodl resolves storage brokers itself (entry points read once, file:// without loading a
plugin, bounded http brokers) and builds dtoolcore's dataset objects on them. A program that
uses reprodl and dtoolcore side by side gets dtoolcore's own behaviour from dtoolcore.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dtoolcore
import pytest
from dtoolcore.storagebroker import DiskStorageBroker
from remote_servers import *  # noqa: F403 - the http_server and dtool_cache fixtures
from remote_servers import HTTPServer

from reprodl import store
from reprodl.data.ops import dataset_info
from reprodl.errors import InvalidURIError
from reprodl.store.brokers import broker_class, frozen_dataset, proto_dataset

ORIGINAL_LOOKUP = dtoolcore._generate_storage_broker_lookup


def test_dtoolcores_lookup_is_its_own_function():
    assert ORIGINAL_LOOKUP.__code__.co_filename == dtoolcore.__file__


def test_using_reprodl_leaves_dtoolcore_as_it_was(image_uri, base_dir, tmp_path, http_server: HTTPServer, dtool_cache):
    ds = store.open_dataset(image_uri)
    ds.item_path(ds.identifiers[0])
    ds.put_annotation("note", "x")
    dataset_info(image_uri)
    (tmp_path / "copies").mkdir()
    copy = store.copy_dataset(image_uri, str(tmp_path / "copies"))
    assert store.list_datasets(str(tmp_path / "copies")) == [copy]
    remote = store.open_dataset(http_server.uri("digits"))
    assert remote.get_readme_content()
    assert type(remote._ds._storage_broker).__module__ == "reprodl.store.http"  # reprodl's bounded broker

    assert dtoolcore._generate_storage_broker_lookup is ORIGINAL_LOOKUP
    own = dtoolcore.DataSet.from_uri(image_uri)
    assert type(own._storage_broker) is DiskStorageBroker
    assert own.get_annotation("note") == "x"
    own_remote = dtoolcore.DataSet.from_uri(http_server.uri("digits"))
    assert type(own_remote._storage_broker).__module__ == "dtool_http.storagebroker"  # dtool-http's, unbounded


def test_reprodls_dataset_objects_are_the_ones_dtoolcore_builds(image_uri, tmp_path):
    ours, theirs = frozen_dataset(image_uri), dtoolcore.DataSet.from_uri(image_uri)
    assert type(ours) is type(theirs)
    assert {k: type(v) for k, v in vars(ours).items()} == {k: type(v) for k, v in vars(theirs).items()}
    assert (ours.uri, ours.admin_metadata, list(ours.identifiers)) == (
        theirs.uri,
        theirs.admin_metadata,
        list(theirs.identifiers),
    )
    admin = dtoolcore.generate_admin_metadata("proto")
    base = store.normalise_uri(str(tmp_path))
    proto, own_proto = proto_dataset(admin, base), dtoolcore.generate_proto_dataset(admin, base)
    assert type(proto) is type(own_proto) and proto.uri == own_proto.uri
    assert {k: type(v) for k, v in vars(proto).items()} == {k: type(v) for k, v in vars(own_proto).items()}


def test_a_proto_dataset_is_not_opened_as_frozen(tmp_path):
    admin = dtoolcore.generate_admin_metadata("unfinished")
    proto = proto_dataset(admin, store.normalise_uri(str(tmp_path)))
    proto.create()
    with pytest.raises(dtoolcore.DtoolCoreTypeError, match="is not a DataSet"):
        frozen_dataset(proto.uri)
    assert store.list_datasets(str(tmp_path)) == []


def test_an_unknown_scheme_names_the_plugin_to_install():
    with pytest.raises(InvalidURIError, match=r"no dtool storage broker for gopher:// URIs .* install dtool-http"):
        broker_class("gopher://host/ds")


def test_a_fresh_process_opening_a_local_dataset_patches_nothing_and_loads_no_plugin(image_uri):
    code = (
        "import json, sys, dtoolcore\n"
        "before = dtoolcore._generate_storage_broker_lookup\n"
        "from reprodl.store import open_dataset\n"
        f"ds = open_dataset({image_uri!r})\n"
        "ds.get_readme_content(); ds.item_path(ds.identifiers[0])\n"
        "print(json.dumps({'same': dtoolcore._generate_storage_broker_lookup is before,\n"
        "    'plugins': sorted(m for m in ('dtool_s3', 'dtool_http', 'boto3') if m in sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    assert json.loads(out.stdout) == {"same": True, "plugins": []}
