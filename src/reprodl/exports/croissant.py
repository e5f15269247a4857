"""A dataset as MLCommons Croissant 1.1 JSON-LD.

The files are described with their sha256: a FileObject per item of a tensor dataset (whose
RecordSets images and labels are row-aligned); for an image dataset, a FileSet of the images
beside a FileObject for dtool's manifest, which holds every image's md5. RecordSets describe
the fields: each sample's image (or array) and label, and the category encoding. Paths are
relative to the dataset's root directory (where dtool keeps ``data/`` and ``.dtool/``): save
the file there, or map them when loading.
"""

from __future__ import annotations

import datetime
import json
import posixpath
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import DatasetFormatError
from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import Licence, Source, check_dataset_kind, readme_licence
from reprodl.store import StoredDataSet, file_sha256, local_path

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CONTEXT: dict[str, Any] = {  # the standard Croissant 1.1 @context, as mlcroissant writes it
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".npy": "application/x-npy",
}
_DTYPES = {
    "uint8": "cr:UInt8",
    "int64": "cr:Int64",
    "int32": "cr:Int32",
    "float32": "cr:Float32",
    "float64": "cr:Float64",
    "float16": "cr:Float16",
}


def croissant(source: Source) -> dict[str, Any]:
    """The Croissant JSON-LD of a dataset (a model is refused: it is not training data)."""
    check_dataset_kind(source, "Croissant")
    ds = source.dataset
    kind = ds.get_annotation(keys.INPUT_TYPE)
    if kind == keys.INPUT_TYPE_TENSOR:
        distribution, record_sets = _tensor_parts(ds)
    elif kind == keys.INPUT_TYPE_IMAGE:
        distribution, record_sets = _image_parts(ds)
    else:
        raise DatasetFormatError(
            f"{ds.uri} has {keys.INPUT_TYPE} = {kind!r}: the Croissant export describes an ImageDataSet or a "
            "TensorDataSet (reprodl dataset create-from-dirtree / create-from-arrays make one)"
        )
    return {**_metadata(ds), "distribution": distribution, "recordSet": [_categories(ds), *record_sets]}


def _metadata(ds: StoredDataSet) -> dict[str, Any]:
    """Name, description, licence, creators and identity, from the README and dtool."""
    readme = ds.readme()
    meta: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": ds.name,
        "description": str(readme.get("description") or f"the dtool dataset {ds.name}").strip()
        + f" (dtool UUID {ds.uuid}; reprodl manifest digest {ds.manifest_digest()})",
        "url": ds.uri,
        "identifier": f"urn:uuid:{ds.uuid}",
        "version": "1.0.0",
        "sameAs": ds.uri,
        "keywords": ["reprodl", "dtool", str(ds.get_annotation(keys.INPUT_TYPE))],
    }
    meta["license"] = _licence(readme)
    authors = readme.get("authors") or readme.get("creator") or []
    if isinstance(authors, str):
        authors = [authors]
    meta["creator"] = [{"@type": "sc:Person", "name": str(a)} for a in authors] or [
        {"@type": "sc:Person", "name": str(ds.admin_metadata.get("creator_username") or "unknown")}
    ]
    if readme.get("origin"):
        meta["citeAs"] = str(readme["origin"])
    frozen = ds.admin_metadata.get("frozen_at")
    if frozen:
        meta["datePublished"] = datetime.datetime.fromtimestamp(float(frozen), datetime.timezone.utc).isoformat()
    return meta


def _licence(readme: dict[str, Any]) -> Any:
    """The README's licence: a known one by its SPDX URL (as Croissant recommends), another as
    its text; none stated is said so, as a CreativeWork (not left out for the reader to guess)."""
    text = readme_licence(readme)
    if text is None:
        return {
            "@type": "sc:CreativeWork",
            "name": "unspecified",
            "description": "the dataset's README states no licence: ask its authors before reuse "
            "(its `license` field states one)",
        }
    return Licence(text, "the dataset's README").url or text


def _file_object(ds: StoredDataSet, relpath: str) -> dict[str, Any]:
    """One item as a FileObject with its sha256."""
    suffix = posixpath.splitext(relpath)[1].lower()
    return {
        "@type": "cr:FileObject",
        "@id": relpath,
        "name": relpath,
        "contentUrl": f"data/{relpath}",
        "encodingFormat": _MIME.get(suffix, "application/octet-stream"),
        "contentSize": f"{ds.item_properties(ds.identifier_of(relpath))['size_in_bytes']} B",
        "sha256": file_sha256(ds.item_path(ds.identifier_of(relpath))),
    }


def _tensor_parts(ds: StoredDataSet) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A tensor dataset: its arrays as FileObjects, and samples of (array, label index)."""
    files = [_file_object(ds, ds.relpath(i)) for i in sorted(ds.identifiers, key=ds.relpath)]
    shape = [int(d) for d in ds.get_annotation(keys.TENSOR_SHAPE) or []]
    dtype = _DTYPES.get(str(ds.get_annotation(keys.TENSOR_DTYPE)), "sc:Number")
    n = shape[0] if shape else "?"
    images = {
        "@type": "cr:RecordSet",
        "@id": "images",
        "name": "images",
        "description": f"{n} samples: row i of {keys.TENSOR_DATA_FILE} (a NumPy .npy file); its label is "
        "row i of labels",
        "field": [
            {
                "@type": "cr:Field",
                "@id": "images/image",
                "name": "image",
                "dataType": dtype,
                "isArray": True,
                "arrayShape": ",".join(str(d) for d in shape[1:]) or "-1",
                "source": {"fileObject": {"@id": keys.TENSOR_DATA_FILE}},
            }
        ],
    }
    labels = {
        "@type": "cr:RecordSet",
        "@id": "labels",
        "name": "labels",
        "description": f"{n} labels: row i of {keys.TENSOR_LABELS_FILE}, the category index of row i of images",
        "field": [
            {
                "@type": "cr:Field",
                "@id": "labels/label",
                "name": "label",
                "dataType": "cr:Int64",
                "references": {"field": {"@id": "categories/index"}},
                "source": {"fileObject": {"@id": keys.TENSOR_LABELS_FILE}},
            }
        ],
    }
    return files, [images, labels]


def _image_parts(ds: StoredDataSet) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An image dataset: the manifest (every image's md5) and a FileSet of the images; samples of (image, label)."""
    suffixes = sorted({posixpath.splitext(ds.relpath(i))[1].lower() for i in ds.identifiers})
    files = _manifest_object(ds)
    files.append(
        {
            "@type": "cr:FileSet",
            "@id": "images",
            "name": "images",
            "encodingFormat": _MIME.get(suffixes[0], "application/octet-stream") if suffixes else "image/png",
            "includes": [f"data/*/*{s}" for s in suffixes],
        },
    )
    fields = [
        {
            "@type": "cr:Field",
            "@id": "samples/image",
            "name": "image",
            "dataType": "sc:ImageObject",
            "source": {"fileSet": {"@id": "images"}, "extract": {"fileProperty": "content"}},
        },
        {
            "@type": "cr:Field",
            "@id": "samples/label",
            "name": "label",
            "dataType": "sc:Text",
            "description": "the category: the image's directory (the dataset's category overlay)",
            "references": {"field": {"@id": "categories/name"}},
            "source": {
                "fileSet": {"@id": "images"},
                "extract": {"fileProperty": "fullpath"},
                "transform": {"regex": "^(?:data/)?([^/]+)(?:/[^/]+)?$"},
            },
        },
    ]
    samples = {
        "@type": "cr:RecordSet",
        "@id": "samples",
        "name": "samples",
        "description": f"{len(ds.identifiers)} images, one per item data/<category>/<file>",
        "field": fields,
    }
    return files, [samples]


def _manifest_object(ds: StoredDataSet) -> list[dict[str, Any]]:
    """dtool's manifest (every item's relpath, size and md5) as a FileObject, for a local dataset."""
    root = local_path(ds.uri)
    if root is None:
        return []  # a remote dataset's manifest has no file to hash here; its digest is in the description
    return [
        {
            "@type": "cr:FileObject",
            "@id": "manifest",
            "name": "manifest",
            "description": f"dtool's manifest: each image's relpath, size and md5 (reprodl manifest digest "
            f"{ds.manifest_digest()})",
            "contentUrl": ".dtool/manifest.json",
            "encodingFormat": "application/json",
            "sha256": file_sha256(root / ".dtool" / "manifest.json"),
        }
    ]


def _categories(ds: StoredDataSet) -> dict[str, Any]:
    """The category encoding as an inline RecordSet (name, index)."""
    encoding = dict(ds.get_annotation(keys.CATEGORY_ENCODING) or {})
    return {
        "@type": "cr:RecordSet",
        "@id": "categories",
        "name": "categories",
        "key": {"@id": "categories/index"},
        "field": [
            {"@type": "cr:Field", "@id": "categories/name", "name": "name", "dataType": "sc:Text"},
            {"@type": "cr:Field", "@id": "categories/index", "name": "index", "dataType": "sc:Integer"},
        ],
        "data": [
            {"categories/name": n, "categories/index": int(i)}
            for n, i in sorted(encoding.items(), key=lambda kv: kv[1])
        ],
    }


def write(source: Source, path: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``croissant`` format's writer (:mod:`reprodl.exports.formats`): the JSON-LD to ``path``."""
    doc = croissant(source)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"record_sets": [r["name"] for r in doc["recordSet"]], "files": len(doc["distribution"])}
