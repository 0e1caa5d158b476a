"""`tracekit model ...`: JSON shape, figures and one-line errors with exit code 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tracekit.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["model", *args])


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_geometry_json():
    data = run_json("geometry", "--arch", "arm64", "--granule", "4K", "--ipa-bits", "40")
    assert (data["levels"], data["start_level"], data["pgd_pages"]) == (3, 1, 2)
    assert [row["level"] for row in data["per_level"]] == [1, 2, 3]
    assert run_json("geometry", "--arch", "x86", "--levels", "5")["va_bits"] == 57


def test_split_json_holds_both_runs_and_the_lab_figure():
    data = run_json("split", "--arch", "arm64", "--memslot", "256M", "--backing", "thp", "--chunk", "2M", "--explicit")
    without, with_skip = data["without_skip"], data["with_skip"]
    assert without["walks"] == 128 and without["callbacks"] == 65_664
    level3 = {row["level"]: row for row in without["levels"]}[3]
    assert (level3["entries"], level3["callbacks"]) == (65_536, 65_536)
    assert with_skip["callbacks"] == 128 and with_skip["skipped_levels"] == [3]
    assert data["reduction_percent"]["callbacks"] == pytest.approx(100 * (128 - 65_664) / 65_664, abs=0.01)
    assert data["checked_explicitly"] is True


def test_split_text_and_x86():
    result = run("split", "--arch", "x86", "--memslot", "64M", "--backing", "thp", "--skip-levels")
    assert result.exit_code == 0 and "splits 32" in result.output
    data = run_json("split", "--arch", "x86", "--memslot", "1G", "--backing", "hugetlb-1g", "--mode", "clear")
    splits = {row["level"]: row["splits"] for row in data["without_skip"]["levels"]}
    assert (splits[3], splits[2]) == (1, 512)


def test_split_scale_is_analytic():
    data = run_json("split", "--memslot", "1.5T", "--ipa-bits", "44", "--backing", "4k", "--mode", "clear")
    assert data["without_skip"]["walks"] == (3 << 39) // (256 << 10)  # one walk per 64-page word


def test_walk_json():
    data = run_json("walk", "--arch", "x86", "--levels", "4", "--gva", "0x40201234", "--map", "0x40000000:0x200000:64M:2M")
    assert [s["level"] for s in data["steps"]] == [4, 3, 2] and data["gpa"] == 0x401234 and data["depth"] == 3


def test_coalesce_json():
    data = run_json("coalesce", "--block", "2M", "--count", "2")
    assert data["old"]["unmapped_steps"] == 2 * 515 and data["new"]["unmapped_steps"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (("split", "--memslot", "2T", "--backing", "thp"), "beyond the 40-bit IPA space"),
        (("split", "--memslot", "1G", "--backing", "hugetlb-1g", "--granule", "16K"), "does not exist"),
        (("split", "--memslot", "1G", "--base", "0x1000", "--backing", "thp"), "not aligned"),
        (("split", "--memslot", "1G", "--chunk", "3M"), "chunk"),
        (("geometry", "--ipa-bits", "60"), "IPA size"),
        (("walk", "--gva", "0x800000000000"), "not canonical"),
    ],
)
def test_impossible_requests_are_one_line_errors(args, message):
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
