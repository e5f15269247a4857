"""Where a reproduction reads each recorded dataset from.

By default from the recorded URI. ``reprodl reproduce --data ROLE=URI`` points a role at another
copy of the same dataset (after ``reprodl dataset copy`` or ``dtool cp``): the copy must have the
recorded UUID and manifest digest, else it is refused before anything runs. A local dataset
whose recorded URI is gone is looked for at its recorded path relative to the working
directory (``DataRef.path``), so a moved project reproduces when run from the same place in it.
Whatever is found is then checked item by item as every reproduction checks its data.

Example:
    >>> where = data_locations(record, {"train": "/mnt/copies/digits"})   # doctest: +SKIP
    >>> relocated(record, where).data[0].uri                               # doctest: +SKIP
    'file://host/mnt/copies/digits'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reprodl.errors import ReprodlError, ReproductionError
from reprodl.provenance import ProvenanceRecord
from reprodl.store import local_path, normalise_uri, open_dataset


def data_locations(record: ProvenanceRecord, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Recorded dataset URI -> the URI to read it from, for each dataset not read where recorded.

    ``given`` maps roles to copies (``--data train=URI``); each is refused
    (:class:`ReproductionError`, naming the role and both values) unless it has the UUID and the
    manifest digest of the role's recorded dataset. A copy replaces the recorded dataset in every
    role it was read in.
    """
    where: dict[str, str] = {}
    dtool = [r for r in record.data if r.source == "dtool"]
    for role, uri in (given or {}).items():
        refs = [r for r in dtool if r.role == role]
        if not refs:
            roles = sorted({r.role for r in dtool})
            raise ReproductionError(
                f"--data {role}={uri}: the record has no reprodl dataset in the role {role!r} "
                f"(its reprodl datasets are in the roles {roles}): name one of those roles"
            )
        try:
            ds = open_dataset(uri)
        except ReprodlError as exc:
            raise ReproductionError(f"--data {role}={uri}: the dataset cannot be opened ({exc})") from None
        same = [r for r in refs if r.uuid == ds.uuid]
        if not same:
            raise ReproductionError(
                f"--data {role}={uri}: that dataset has UUID {ds.uuid}, but the recorded {role} dataset "
                f"{refs[0].name} has UUID {refs[0].uuid}: give a copy of the same dataset (dtool cp keeps the UUID)"
            )
        digest = ds.manifest_digest()
        if digest != same[0].manifest_digest:
            raise ReproductionError(
                f"--data {role}={uri}: that copy of {same[0].name} has manifest digest {digest}, but the recorded "
                f"{role} dataset has manifest digest {same[0].manifest_digest}: its items differ from the ones "
                "trained on; give an unchanged copy"
            )
        where.update({r.uri: ds.uri for r in same})
    for ref in dtool:
        recorded = local_path(ref.uri)
        if ref.uri in where or ref.path is None or recorded is None or recorded.exists():
            continue
        here = Path.cwd() / ref.path
        if here.exists():
            where[ref.uri] = normalise_uri(str(here))
    return where


def relocated(record: ProvenanceRecord, where: Mapping[str, str]) -> ProvenanceRecord:
    """``record`` with each dataset URI that ``where`` maps replaced: for checking and opening the
    data only (the record's digest and everything else stay the original's)."""
    if not where:
        return record
    data = [r.model_copy(update={"uri": where.get(r.uri, r.uri)}) for r in record.data]
    return record.model_copy(update={"data": data})
