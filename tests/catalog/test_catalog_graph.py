"""reprodl.catalog.graph: the lineage graph as DOT, SVG and HTML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reprodl.catalog import (
    Catalog,
    build_graph,
    write_graph,
)
from reprodl.errors import CatalogError

pytest_plugins = ["train_fixtures", "catalog_world"]


def test_graph_is_written_as_dot_svg_and_html(cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("reprodl.catalog.graph.shutil.which", lambda name: None)  # our own layout, not Graphviz
    graph = build_graph(cat)
    assert len(graph.nodes) == 6 and ("fine-tuned" in {label for _, _, label in graph.edges})
    dot = write_graph(graph, tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph lineage {") and dot.count("->") == len(graph.edges)
    svg = ET.parse(write_graph(graph, tmp_path / "g.svg")).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) == 6
    page = write_graph(graph, tmp_path / "g.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "digits-ft" in page and "src=" not in page
    focused = build_graph(cat, focus="more-digits")
    assert {n.name for n in focused.nodes.values()} >= {"more-digits", "digits-ft", "a-vs-b"}
    with pytest.raises(CatalogError, match=r"name it \.dot, \.svg or \.html"):
        write_graph(graph, tmp_path / "g.png")
