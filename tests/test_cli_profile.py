"""``curvext profile`` end to end on digits, and its resume."""
from __future__ import annotations

import pandas as pd

from curvext.cli import main


def test_profile_writes_table_and_plot_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path / "zoo"))
    out = tmp_path / "prof"
    args = ["profile", "--images", "6", "--k", "3", "--chunk", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    table = pd.read_parquet(out / "profile.parquet")
    assert len(table) == 6 * 6 and set(table["rank"]) == set(range(6))
    assert (out / "profile.png").stat().st_size > 0
    # Each image's values are ascending (k most negative, then k most positive).
    for _, g in table.groupby("image"):
        assert g.sort_values("rank")["curvature"].is_monotonic_increasing
    # A rerun reuses the saved parts (modification times unchanged).
    parts = sorted((out / "parts").iterdir())
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps
