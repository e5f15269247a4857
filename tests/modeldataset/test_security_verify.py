"""`reprodl verify` fails what it promises to fail (issue 17, items 5 and 6).

Each hostile input is built as an attacker would: a real model or claim dataset copied, its
record, ``claim.json`` or annotations edited, and everything anyone can recompute resealed (the
record's self-digest, a fresh dtool manifest around the edited items), so only the defence
under test stops it. Everything goes through the real entry point, ``reprodl verify``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import *  # noqa: F403 - fixtures
from train_fixtures import TrainedModel, digits_config, path_of, rewrite_model

from reprodl import keys
from reprodl.provenance import mirror_annotations
from reprodl.reproduction import claims
from reprodl.store import create_dataset, open_dataset

RUN = {"entry_script": "train.py", "argv": [], "python": "3.11.0", "seed": 0, "root": "/home/someone/project"}
TRUST_CHECK = "recorded names pass the trust policy"


def _reseal_annotations(uri: str) -> None:
    """What an attacker also does: make the (writable) mirror annotations say what the record says."""
    from reprodl.modeldataset.read import read_record

    ds = open_dataset(uri)
    for name, value in mirror_annotations(read_record(ds, check=False)).items():
        ds.put_annotation(name, value)


def _forged_model(trained: TrainedModel, base: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> str:
    uri = rewrite_model(trained.uri, base, name, edit=edit)
    _reseal_annotations(uri)
    return uri


# --- item 5: every record goes through the trust policy ----------------------------------------


def test_a_start_run_record_naming_os_system_fails_verify(trained_model: TrainedModel, tmp_path: Path, cli) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"] = dict(RUN)
        raw["architecture"]["import_path"] = "os:system"
        raw["training"]["loss"] = {"module": "os", "class_name": "system", "args": {"command": "touch pwned"}}

    uri = _forged_model(trained_model, tmp_path, "start-run-os-system", edit)
    result = cli("verify", uri)
    assert result.exit_code == 1, result.output
    assert "All checks passed" not in result.stdout
    assert "will not be imported: architecture os:system" in result.stdout
    assert "will not be imported: loss function os:system" in result.stdout
    report = json.loads(cli("verify", uri, "--json").stdout)
    assert report["ok"] is False
    (trust_check,) = [c for c in report["checks"] if c["name"] == TRUST_CHECK]
    assert trust_check["ok"] is False
    # Every other check passes: the trust policy alone stops it.
    assert all(c["ok"] for c in report["checks"] if c["name"] != TRUST_CHECK)


def test_a_start_run_record_of_trusted_names_verifies_with_a_note(
    trained_model: TrainedModel, tmp_path: Path, cli
) -> None:
    uri = _forged_model(trained_model, tmp_path, "start-run", lambda raw: raw["code"].update(run=dict(RUN)))
    result = cli("verify", uri)
    assert result.exit_code == 0, result.output
    assert "ok  recorded names pass the trust policy" in result.stdout
    assert "re-executed by reproduce (with --trust-code)" in result.stdout


def test_a_script_class_of_a_start_run_record_verifies_with_a_note(
    trained_model: TrainedModel, tmp_path: Path, cli
) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["code"]["run"] = dict(RUN)
        raw["architecture"]["import_path"] = "__main__:Net"

    uri = _forged_model(trained_model, tmp_path, "start-run-main", edit)
    passed = cli("verify", uri)
    assert passed.exit_code == 0, passed.output
    assert "defined in the recorded script" in passed.stdout and "never imported" in passed.stdout


def test_a_script_class_of_a_record_without_its_script_fails(trained_model: TrainedModel, tmp_path: Path, cli) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["architecture"]["import_path"] = "__main__:Net"

    uri = _forged_model(trained_model, tmp_path, "main-no-script", edit)
    refused = cli("verify", uri)
    assert refused.exit_code == 1 and "will not be imported: architecture __main__:Net" in refused.stdout


# --- item 6: verify CLAIM re-derives its statistics from its members ---------------------------


@pytest.fixture(scope="module")
def claim_uri(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real claim: GenNet lr 0.05 (A) against lr 0.0005 (B), 2 paired seeds, one epoch (read-only)."""
    out = tmp_path_factory.mktemp("claim")
    cfg = digits_config(digits_split_master, out, name="digits")
    result = claims.compare(cfg, seeds=2, jobs=1, set_b=["lr=0.0005"])
    assert result.verdict == claims.A_BETTER and result.claim_uri is not None
    return result.claim_uri


def _members(claim: dict[str, Any]) -> list[str]:
    return [r["uri"] for side in ("a", "b") for r in claim.get("runs", {}).get(side, [])]


def _forged_claim(
    src_uri: str,
    base: Path,
    name: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
    *,
    members: list[str] | None = None,
) -> str:
    """A new claim dataset with ``src_uri``'s items, its ``claim.json`` edited, a fresh manifest,
    and the annotations a claim carries (the member list as the edited claim has it)."""
    src = open_dataset(src_uri)
    claim = claims.load_claim(src_uri)
    if edit is not None:
        edit(claim)
    with create_dataset(str(base), name, readme=src.get_readme_content()) as writer:
        for idn in src.identifiers:
            rel = src.relpath(idn)
            if rel == keys.CLAIM_FILE:
                writer.put_json(claim, rel)
            else:
                writer.put_item(src.item_path(idn), rel)
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_CLAIM)
        writer.put_annotation(keys.SUMMARY_MEMBERS, _members(claim) if members is None else members)
    assert writer.uri is not None
    return writer.uri


def _restat(claim: dict[str, Any]) -> None:
    """What an attacker does after editing members: recompute P(A>B), the interval, n and the verdict."""
    runs = {side: [claims.RunValue(**r) for r in claim["runs"][side]] for side in ("a", "b")}
    judged = claims.judge(runs, metric=claim["metric"], vary=claim["vary"], recipes=claim["recipes"])
    for field in ("probability_a_better", "ci_low", "ci_high", "verdict", "n"):
        claim[field] = getattr(judged, field)


def _verify(cli, uri: str) -> tuple[int, dict[str, Any], str]:
    text = cli("verify", uri)
    as_json = cli("verify", uri, "--json")
    assert as_json.exit_code == text.exit_code
    return text.exit_code, json.loads(as_json.stdout), text.stdout


def _failed(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["checks"] if not c["ok"]]


def test_an_honest_claim_verifies_and_lists_each_member(claim_uri: str, tmp_path: Path, cli) -> None:
    relocated = _forged_claim(claim_uri, tmp_path, "copy")  # an untouched claim under a fresh manifest
    code, report, text = _verify(cli, relocated)
    assert code == 0, text
    assert report["ok"] is True
    assert "statistics re-derived from the members' records" in [c["name"] for c in report["checks"]]
    assert [(m["side"], m["seed"], m["ok"]) for m in report["members"]] == [
        ("a", 0, True),
        ("a", 1, True),
        ("b", 0, True),
        ("b", 1, True),
    ]


def test_a_claim_with_no_members_fails(claim_uri: str, tmp_path: Path, cli) -> None:
    def edit(claim: dict[str, Any]) -> None:
        claim["runs"] = {"a": [], "b": []}

    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "empty", edit))
    assert code == 1, text
    assert "All checks passed" not in text
    assert report["ok"] is False and report["members"] == []
    assert "statistics re-derived from the members' records" in _failed(report)
    assert "no members" in text


@pytest.mark.parametrize(
    "field,value",
    [
        ("verdict", claims.B_BETTER),
        ("verdict", claims.NO_DIFFERENCE),
        ("ci_low", 0.0),
        ("ci_high", 0.4),
        ("n", 50),
        ("probability_a_better", 0.5),
    ],
)
def test_a_claim_whose_statistics_contradict_its_members_fails(
    field: str, value: Any, claim_uri: str, tmp_path: Path, cli
) -> None:
    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "edited", lambda c: c.update({field: value})))
    assert code == 1, text
    assert _failed(report) == ["statistics re-derived from the members' records"]
    assert f"{field}: the claim says {value}" in text
    assert all(m["ok"] for m in report["members"])


@pytest.mark.parametrize("claim_follows_the_digest", [False, True])
def test_a_member_record_altered_under_a_consistent_claim_fails(
    claim_follows_the_digest: bool, claim_uri: str, tmp_path: Path, cli
) -> None:
    """One member's record says B won its pair (resealed); the claim's numbers stay self-consistent."""
    copy = tmp_path / "copy"
    original = claims.load_claim(claim_uri)
    for uri in _members(original):
        shutil.copytree(path_of(uri), copy / path_of(uri).name)
    victim = original["runs"]["b"][0]
    altered = rewrite_model(
        victim["uri"], tmp_path, "altered", edit=lambda raw: raw["results"]["final"].update(valid_accuracy=1.0)
    )
    _reseal_annotations(altered)
    shutil.rmtree(copy / path_of(victim["uri"]).name)
    shutil.move(path_of(altered), copy / path_of(victim["uri"]).name)
    new_digest = open_dataset(str(copy / path_of(victim["uri"]).name)).get_annotation(keys.RECORD_DIGEST)

    def edit(claim: dict[str, Any]) -> None:
        for side in ("a", "b"):
            for run in claim["runs"][side]:
                run["uri"] = str(copy / path_of(run["uri"]).name)
        if claim_follows_the_digest:
            claim["runs"]["b"][0]["record_digest"] = new_digest
        _restat(claim)  # still the claim's own values: consistent with itself

    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "claim", edit))
    assert code == 1, text
    failed = _failed(report)
    assert "statistics re-derived from the members' records" in failed
    assert "member B seed 0: valid_accuracy" in failed
    assert ("member B seed 0: record digest" in failed) is not claim_follows_the_digest
    assert [m["ok"] for m in report["members"]] == [True, True, False, True]
    assert "probability_a_better: the claim says 1.0, its members' records give 0.5" in text


def test_an_unreachable_member_fails_alone(claim_uri: str, tmp_path: Path, cli) -> None:
    nowhere = str(tmp_path / "nowhere" / "digits.b.seed1")

    def edit(claim: dict[str, Any]) -> None:
        claim["runs"]["b"][1]["uri"] = nowhere

    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "claim", edit))
    assert code == 1, text
    assert "Traceback" not in text
    members = report["members"]
    assert [(m["side"], m["seed"], m["ok"]) for m in members] == [
        ("a", 0, True),
        ("a", 1, True),
        ("b", 0, True),
        ("b", 1, False),
    ]
    assert members[3]["uri"] == nowhere and "nowhere" in " ".join(members[3]["problems"])
    assert "member B seed 1: verify" in _failed(report)
    assert "statistics re-derived from the members' records" in _failed(report)
    # The reachable members were still checked, each of their checks passing.
    checked = [c for c in report["checks"] if c["name"].startswith(("member A", "member B seed 0"))]
    assert len(checked) >= 9 and all(c["ok"] for c in checked)


def test_members_paired_across_seeds_fail(claim_uri: str, tmp_path: Path, cli) -> None:
    """B's members swapped: each member still verifies and gives its value; the pairs do not share a seed."""

    def edit(claim: dict[str, Any]) -> None:
        claim["runs"]["b"].reverse()
        _restat(claim)

    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "swapped", edit))
    assert code == 1, text
    assert _failed(report) == ["statistics re-derived from the members' records"]
    assert "pair 1 is A seed 0 against B seed 1" in text


def test_a_members_annotation_that_is_not_the_claims_members_fails(claim_uri: str, tmp_path: Path, cli) -> None:
    members = _members(claims.load_claim(claim_uri))
    forged = _forged_claim(claim_uri, tmp_path, "claim", members=[*members, str(tmp_path / "elsewhere")])
    code, report, text = _verify(cli, forged)
    assert code == 1, text
    assert _failed(report) == [f"annotation {keys.SUMMARY_MEMBERS} lists the claim's members"]


def test_a_pair_listed_twice_fails(claim_uri: str, tmp_path: Path, cli) -> None:
    """The first pair listed again: n, and the interval's width, would look like more evidence than there is."""

    def edit(claim: dict[str, Any]) -> None:
        for side in ("a", "b"):
            claim["runs"][side].append(dict(claim["runs"][side][0]))
        _restat(claim)

    code, report, text = _verify(cli, _forged_claim(claim_uri, tmp_path, "twice", edit))
    assert code == 1, text
    assert _failed(report) == ["statistics re-derived from the members' records"]
    assert "A seed 0 is listed 2 times" in text and "B seed 0 is listed 2 times" in text
