"""verify_claim: a claim's own items, each member, and its statistics re-derived from the members' records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from reprodl import keys
from reprodl.modeldataset.read import load_record
from reprodl.modeldataset.verify import ModelVerification, verify_model
from reprodl.reproduction.claim_dataset import check_claim, load_claim
from reprodl.reproduction.claim_stats import RunValue, judge
from reprodl.store import open_dataset

STATISTICS_CHECK = "statistics re-derived from the members' records"
_STATISTICS = ("n", "probability_a_better", "ci_low", "ci_high", "verdict")


@dataclasses.dataclass
class ClaimVerification(ModelVerification):
    """What :func:`verify_claim` found: its checks, and one entry per member (``side``,
    ``seed``, ``uri``, ``ok`` and the ``problems`` of that member's checks)."""

    members: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "members": [dict(m) for m in self.members]}


def verify_claim(uri: str, *, allow: Iterable[str] = ()) -> ClaimVerification:
    """Check a claim: its own items, each member, and its statistics against the members.

    Each member must verify (:func:`~reprodl.modeldataset.verify.verify_model`), have the
    record digest the claim names and give the value it reports; a member that cannot be
    reached fails its own checks, the others are still checked. P(A>B), its interval, n and
    the verdict are then re-derived from the members' records by :func:`judge` (what wrote
    the claim), pairing run i of A with run i of B, and any difference fails; so do a claim
    with no members, pairs whose records have different seeds, and a seed listed twice.
    """

    ds = open_dataset(uri)
    result = ClaimVerification(uri=ds.uri)
    items = ds.verify(deep=True)
    result.add("claim dataset items match its manifest", items.ok, "; ".join(items.problems()))
    claim = load_claim(uri)
    check_claim(claim, ds.uri)
    raw = claim.get("runs")
    runs: dict[str, Any] = raw if isinstance(raw, dict) else {}
    members = {side: [m if isinstance(m, dict) else {} for m in runs.get(side) or []] for side in ("a", "b")}
    if keys.SUMMARY_MEMBERS in ds.annotation_names():
        listed, named = ds.get_annotation(keys.SUMMARY_MEMBERS), [m.get("uri") for m in members["a"] + members["b"]]
        result.add(
            f"annotation {keys.SUMMARY_MEMBERS} lists the claim's members",
            listed == named,
            f"the annotation lists {listed}, the claim's members are {named}",
        )
    metric = str(claim.get("metric", ""))
    read = {side: [_verify_member(result, side, m, metric, allow) for m in members[side]] for side in ("a", "b")}
    problems = _statistics_problems(claim, members, read)
    result.add(STATISTICS_CHECK, not problems, "; ".join(problems))
    return result


def _verify_member(
    result: ClaimVerification, side: str, member: dict[str, Any], metric: str, allow: Iterable[str]
) -> RunValue | None:
    """Add a member's checks and its entry to ``result``; what its record gives (None when the
    model does not verify, cannot be reached, or its record has no such metric)."""
    label, before = f"member {side.upper()} seed {member.get('seed')}", len(result.checks)
    run = _member_checks(result, label, member, metric, allow)
    problems = [f"{c.name}: {c.detail}" for c in result.checks[before:] if not c.ok]
    result.members.append(
        {"side": side, "seed": member.get("seed"), "uri": member.get("uri"), "ok": not problems, "problems": problems}
    )
    return run


def _member_checks(
    result: ClaimVerification, label: str, member: dict[str, Any], metric: str, allow: Iterable[str]
) -> RunValue | None:
    uri = str(member.get("uri"))
    try:
        check = verify_model(uri, allow=allow)
        record = load_record(uri, check=False) if check.ok else None
    except Exception as exc:  # noqa: BLE001 - one unreachable member fails itself, not the whole verify
        result.add(f"{label}: verify", False, f"{uri} cannot be read: {exc}")
        return None
    failed = [c.name for c in check.checks if not c.ok]
    result.add(f"{label}: verify", check.ok, f"{uri}: {', '.join(failed)}")
    if record is None:
        return None
    result.add(
        f"{label}: record digest",
        record.digest == member.get("record_digest"),
        f"the claim says {member.get('record_digest')}, the model's record is {record.digest}",
    )
    value = record.results.final.get(metric)
    result.add(
        f"{label}: {metric}", value == member.get("value"), f"the claim says {member.get('value')}, the record {value}"
    )
    if not isinstance(value, (int, float)):
        return None
    seed = int(record.training.seeds.seed)
    return RunValue(seed=seed, value=float(value), uri=uri, record_digest=record.digest or "")


def _statistics_problems(
    claim: dict[str, Any], members: dict[str, list[dict[str, Any]]], read: dict[str, list[RunValue | None]]
) -> list[str]:
    """How the claim's n, P(A>B), interval and verdict differ from what its members' records give."""
    if not read["a"] and not read["b"]:
        return ["the claim has no members: nothing supports its numbers or its verdict"]
    if len(read["a"]) != len(read["b"]):
        return [f"the claim pairs {len(read['a'])} runs of A with {len(read['b'])} of B: runs pair one to one"]
    unread = [f"{s.upper()} seed {m.get('seed')}" for s in ("a", "b") for m, r in zip(members[s], read[s]) if not r]
    if unread:
        return [f"cannot be re-derived: the member(s) {', '.join(unread)} could not be read (see their checks)"]
    runs = {side: [r for r in read[side] if r is not None] for side in ("a", "b")}
    problems = _pairing_problems(members, runs)
    band = claim.get("evaluation_band")  # as measured when the claim was made (not measured again here)
    band = band if isinstance(band, dict) and isinstance(band.get("band"), (int, float)) else None
    judged = judge(runs, metric=str(claim.get("metric", "")), vary=[], recipes={}, evaluation_band=band)
    for field in _STATISTICS:
        claimed, derived = claim.get(field), getattr(judged, field)
        if not _same(claimed, derived):
            problems.append(f"{field}: the claim says {claimed}, its members' records give {derived}")
    return problems


def _pairing_problems(members: dict[str, list[dict[str, Any]]], runs: dict[str, list[RunValue]]) -> list[str]:
    """Members whose record has another seed than the claim says, pairs of two seeds, seeds listed twice."""
    problems = [
        f"{side.upper()} seed {m.get('seed')}: its record's seed is {r.seed}"
        for side in ("a", "b")
        for m, r in zip(members[side], runs[side])
        if m.get("seed") != r.seed
    ]
    problems += [
        f"pair {i} is A seed {a.seed} against B seed {b.seed}: the runs of a pair share a seed"
        for i, (a, b) in enumerate(zip(runs["a"], runs["b"]), start=1)
        if a.seed != b.seed
    ]
    for side in ("a", "b"):
        seeds = [r.seed for r in runs[side]]
        twice = sorted(s for s in set(seeds) if seeds.count(s) > 1)
        problems += [f"{side.upper()} seed {s} is listed {seeds.count(s)} times" for s in twice]
    return problems


def _same(claimed: Any, derived: Any) -> bool:
    """Equal, for numbers up to float rounding (a claim's numbers went through JSON)."""
    if isinstance(derived, (int, float)) and isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        return math.isclose(claimed, derived, rel_tol=0, abs_tol=1e-9)
    return bool(claimed == derived)
