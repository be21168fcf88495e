"""Every figure the README's "Measured" section quotes is in bench/results.json, the file
`make bench` writes, and every section there names the command that measured it: a figure
nobody can rerun does not get quoted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.results import record

ROOT = Path(__file__).resolve().parent.parent


def measured_section(readme: str) -> str:
    m = re.search(r"^## Measured\b(.*?)(?=^## )", readme, re.S | re.M)
    assert m, "README has no '## Measured' section"
    section = re.sub(r"\[[^\]]*\]\([^)]*\)", "", m.group(1))  # links
    return re.sub(r"`[^`]*`", "", section)                     # code spans: commands, flags, files


def numbers_in(data) -> list[float]:
    if isinstance(data, dict):
        return [x for v in data.values() for x in numbers_in(v)]
    if isinstance(data, list):
        return [x for v in data for x in numbers_in(v)]
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return [float(data)]
    return []


def quoted_but_not_measured(section: str, values: list[float]) -> list[str]:
    """Decimal figures of `section` that no value rounds to (also as a percentage or a fraction)."""
    def found(s: str) -> bool:
        places, v = len(s.split(".")[1]), float(s.replace(",", ""))
        return any(round(x, places) == v or round(x * 100, places) == v or round(x / 100, places) == v
                   for x in values)
    figures = set(re.findall(r"(?<![\w.-])(\d+\.\d+)(?![\w.])", section))
    return sorted(f for f in figures if not found(f))


def test_every_readme_figure_is_in_results_json():
    data = json.loads((ROOT / "bench" / "results.json").read_text())
    for name, section in data.items():
        assert section.get("command", "").startswith(".venv/bin/python bench/"), (name, section.get("command"))
        assert section.get("machine", {}).get("cores"), name
    missing = quoted_but_not_measured(measured_section((ROOT / "README.md").read_text()), numbers_in(data))
    assert not missing, f"README figures not in bench/results.json: {missing}"


def test_the_check_sees_a_figure_nobody_measured():
    section = measured_section("## Measured\n| speed | **1.62×** | 0.55× of `1.99`|\n## Next\n")
    assert quoted_but_not_measured(section, [1.6213, 0.5512]) == []
    assert quoted_but_not_measured(section, [1.6213]) == ["0.55"]


def test_record_replaces_its_own_section_only(tmp_path):
    path = tmp_path / "results.json"
    record("a", {"x": 1.5}, argv=["bench/a.py", "--n", "2"], path=path)
    record("b", {"y": 2.5}, argv=["bench/b.py"], path=path)
    record("a", {"x": 3.5}, argv=["bench/a.py"], path=path)
    data = json.loads(path.read_text())
    assert data["a"]["figures"] == {"x": 3.5} and data["b"]["figures"] == {"y": 2.5}
    assert data["a"]["command"] == ".venv/bin/python bench/a.py"
    assert data["b"]["machine"]["cores"] >= 1 and len(data["b"]["machine"]["load_average_at_start"]) == 3
