"""curvext.sweep.profile: profiles of an image folder on the sweep engine; unreadable files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from curvext.data import zoo
from curvext.data.image_folder import scan_image_folder
from curvext.geometry.profiles import principal_curvatures
from curvext.sweep import ProfileSettings, profile_dataset
from curvext.sweep.sources import FolderSource
from tests.conftest import write_digit_folder
from tests.sweep.conftest import DIGITS_PREPROCESSING


def test_folder_profiles_equal_direct_ones_and_bad_files_get_nan_rows(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits").eval()
    folder = write_digit_folder(tmp_path / "images", 4, flat=True)
    (folder / "zz-broken.png").write_bytes(b"not a png")
    source = FolderSource(scan_image_folder(folder), DIGITS_PREPROCESSING, workers=0)
    result = profile_dataset(model, source, tmp_path / "out", ProfileSettings(k=2), chunk_size=3)
    table = pd.read_parquet(result.table)
    broken = table[table["name"] == "zz-broken.png"]
    assert len(broken) == 4 and broken["curvature"].isna().all() and broken["error"].notna().all()
    good = table[table["error"].isna()].sort_values(["image", "rank"])
    x = torch.cat([b.images for b in source.batches(range(4), 4, "cpu")])
    expected = principal_curvatures(model, x, k=2).values.double().numpy()
    np.testing.assert_allclose(good["curvature"].to_numpy().reshape(4, 4), expected, rtol=1e-4, atol=1e-6)
    assert result.measured == 4
