"""Processed versions: reproducible builds, immutability, warm-up, tamper detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHIPPED_DATA, synthetic_ohlcv, write_csv

from common.errors import DataError
from datamodules.features import KIND, TIERS, VIX_FEATURES, ohlcv_columns
from datamodules.manifest import PROCESSED, Manifest
from datamodules.processed import build_dataset, compute_dataset, dataset_name, load_dataset, verify_all, warmup_rows
from datamodules.sources import import_csv
from datamodules.standardize import VOLUME_WINDOW, stationary

# rows a stationary channel needs before its own window is full (datamodules/standardize.py)
OWN_WINDOW = {"return": 1, "volume": VOLUME_WINDOW - 1, "adosc": VOLUME_WINDOW - 1, "obv": VOLUME_WINDOW}


@pytest.mark.parametrize("tier", ["a25", "c"])
def test_rebuilding_the_shipped_version_is_a_no_op(data_dir, tier):
    entry = Manifest(data_dir, PROCESSED).get(f"GSPC.dataset.{tier}", 1)
    before = (data_dir / entry.path).read_bytes()
    result = build_dataset("GSPC", tier, 1, data_dir)
    assert not result.written and result.entry.hash == entry.hash
    assert (data_dir / entry.path).read_bytes() == before


def test_a_deleted_version_is_rebuilt_to_the_registered_content(data_dir):
    entry = Manifest(data_dir, PROCESSED).get("GSPC.dataset.a25", 1)
    (data_dir / entry.path).unlink()
    assert verify_all(data_dir)  # missing file is reported
    result = build_dataset("GSPC", "a25", 1, data_dir)
    assert result.written and result.entry.hash == entry.hash
    assert verify_all(data_dir) == []


def test_shipped_datasets_have_the_tier_columns_and_no_gaps(data_dir):
    for tier in ("a25", "c"):
        frame, entry = load_dataset(f"GSPC.dataset.{tier}", 1, data_dir)
        assert list(frame.columns) == TIERS[tier]
        assert np.isfinite(frame.to_numpy()).all()
        assert entry.notes["warmup_rows_dropped"] == 199  # sma_200 is the longest warm-up
        assert entry.rows == 5031 - 199 == len(frame)


@pytest.mark.parametrize("ticker", ["GSPC", "IXIC"])
def test_every_tier_builds_finite_on_real_data(ticker):
    """All tiers on the shipped 20-year series (read only): finite after warm-up, and so is every
    stationary channel once its own rolling window is full."""
    warmup = warmup_rows(ticker, SHIPPED_DATA)
    assert warmup == {tier: 250 if tier.startswith(("a100", "a200")) else 199 for tier in TIERS}
    for tier in TIERS:
        frame, sources, notes = compute_dataset(ticker, tier, SHIPPED_DATA)
        vix = [c for c in TIERS[tier] if c in VIX_FEATURES]
        assert list(frame.columns) == ohlcv_columns(tier) + vix, tier
        assert len(sources) == (2 if vix else 1)
        assert notes["warmup_rows_dropped"] == warmup[tier] and notes["tail_rows_dropped"] == 0
        assert len(frame) == 5031 - warmup[tier] and np.isfinite(frame.to_numpy()).all()
        inputs = stationary(frame, TIERS[tier])
        for column in TIERS[tier]:
            own = OWN_WINDOW.get(KIND[column], 0)
            assert np.isfinite(inputs[column].to_numpy()[own:]).all(), (tier, column)


def test_a_vix_tier_over_a_wider_tier_is_built_and_registered(data_dir):
    result = build_dataset("GSPC", "a50+c", None, data_dir)
    entry = Manifest(data_dir, PROCESSED).get("GSPC.dataset.a50+c", 1)
    assert result.written and entry.tier == "a50+c" and len(entry.columns) == 58 == len(TIERS["a50+c"])
    assert entry.columns == TIERS["a50"] + VIX_FEATURES
    assert [s["name"] for s in entry.sources] == ["GSPC.OHLCV.daily", "VIX.OHLCV.daily"]
    assert entry.notes["warmup_rows_dropped"] == 199 and entry.rows == 5031 - 199
    frame, _ = load_dataset("GSPC.dataset.a50+c", 1, data_dir)
    assert list(frame.columns) == entry.columns
    assert not build_dataset("GSPC", "a50+c", 1, data_dir).written
    assert verify_all(data_dir) == []


def test_a20_stores_raw_prices_for_labels_but_names_20_features(data_dir):
    result = build_dataset("GSPC", "a20", None, data_dir)
    assert result.entry.name == "GSPC.dataset.a20" and result.entry.version == 1
    frame, _ = load_dataset("GSPC.dataset.a20", 1, data_dir)
    assert {"High", "Close"} <= set(frame.columns) and len(TIERS["a20"]) == 20


def test_a_version_with_different_content_is_refused_and_nothing_changes(data_dir, tmp_path):
    # a newer GSPC series replaces the raw entry; the registered v1 must not be overwritten
    import_csv(write_csv(synthetic_ohlcv(600, seed=3), tmp_path / "gspc.csv"), "GSPC", data_dir)
    manifest_before = (data_dir / PROCESSED / "manifest.json").read_bytes()
    entry = Manifest(data_dir, PROCESSED).get("GSPC.dataset.a25", 1)
    file_before = (data_dir / entry.path).read_bytes()
    with pytest.raises(DataError, match="already exists with different content.*use --version 2"):
        build_dataset("GSPC", "a25", 1, data_dir)
    assert (data_dir / PROCESSED / "manifest.json").read_bytes() == manifest_before
    assert (data_dir / entry.path).read_bytes() == file_before
    result = build_dataset("GSPC", "a25", None, data_dir)
    assert result.entry.version == 2 and result.entry.rows == 600 - 199
    assert [e.version for e in Manifest(data_dir, PROCESSED).entries if e.name == "GSPC.dataset.a25"] == [1, 2]


def test_too_few_rows_for_the_warm_up(data_dir, tmp_path):
    import_csv(write_csv(synthetic_ohlcv(150), tmp_path / "short.csv"), "TINY", data_dir)
    with pytest.raises(DataError, match="too few rows"):
        build_dataset("TINY", "a25", None, data_dir)
    assert Manifest(data_dir, PROCESSED).find("TINY.dataset.a25") is None


def test_unknown_ticker_and_tier(data_dir):
    with pytest.raises(DataError, match="unknown raw dataset NOPE.OHLCV.daily"):
        build_dataset("NOPE", "a25", None, data_dir)
    with pytest.raises(DataError, match="unknown tier") as raised:
        build_dataset("GSPC", "z9", None, data_dir)
    message = str(raised.value)
    assert "\n" not in message and all(tier in message for tier in TIERS) and "a200+c" in message


def test_tampered_raw_file_is_refused(data_dir):
    path = data_dir / "raw" / "GSPC.OHLCV.daily.csv.gz"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match="hash mismatch for GSPC.OHLCV.daily v1"):
        build_dataset("GSPC", "a25", 1, data_dir)


def test_tampered_processed_file_is_detected(data_dir):
    entry = Manifest(data_dir, PROCESSED).get("GSPC.dataset.a25", 1)
    frame = pd.read_parquet(data_dir / entry.path)
    frame.iloc[1000, 3] *= 1.0001  # one close, one basis point
    frame.to_parquet(data_dir / entry.path)
    expected = (
        r"hash mismatch for GSPC.dataset.a25 v1 \(expected sha256:.*got sha256:.*"
        r"rebuild with: python cli.py data build --ticker GSPC --tier a25 --version 1"
    )
    with pytest.raises(DataError, match=expected):
        load_dataset("GSPC.dataset.a25", 1, data_dir)
    assert [p.split(":")[0] for p in verify_all(data_dir)] == ["processed GSPC.dataset.a25 v1"]


def test_corrupt_or_missing_processed_file(data_dir):
    entry = Manifest(data_dir, PROCESSED).get("GSPC.dataset.c", 1)
    (data_dir / entry.path).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="unreadable or corrupt"):
        load_dataset("GSPC.dataset.c", 1, data_dir)
    (data_dir / entry.path).unlink()
    with pytest.raises(DataError, match="is missing; rebuild with"):
        load_dataset("GSPC.dataset.c", 1, data_dir)


def test_an_allowed_implausible_series_builds_and_an_unrecorded_one_is_refused(data_dir, tmp_path):
    frame = synthetic_ohlcv(600, seed=5)
    frame.index = frame.index.where(np.arange(len(frame)) < 300, frame.index + pd.Timedelta(days=60))  # a 2-month hole
    entry = import_csv(write_csv(frame, tmp_path / "hole.csv"), "HOLE", data_dir, allow_implausible=True)
    assert list(entry.notes["implausible_allowed"]) == ["gap"]
    assert build_dataset("HOLE", "a25", None, data_dir).written
    path = data_dir / "raw" / "manifest.json"  # the same bytes, registered without the allowance (an older finscale)
    path.write_text(path.read_text().replace('"implausible_allowed"', '"something_else"'))
    with pytest.raises(DataError, match="implausible series, rule gap: 63 calendar days"):
        build_dataset("HOLE", "a25", 2, data_dir)


@pytest.mark.parametrize("ticker", ["../GSPC", "GSPC/../../x", ".GSPC"])
def test_dataset_names_come_only_from_valid_tickers_and_tiers(ticker):
    with pytest.raises(DataError, match="invalid ticker"):
        dataset_name(ticker, "a25")
    with pytest.raises(DataError, match="unknown tier"):
        dataset_name("GSPC", "../a25")
    assert dataset_name(" ^gspc", "a25") == "GSPC.dataset.a25"
