"""Raw OHLCV reading: the shipped files, header normalisation, repairs, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHIPPED_DATA, write_csv

from datamodules.errors import DataError
from datamodules.sources import read_ohlcv


def test_shipped_sp500_has_the_documented_shape():
    data = read_ohlcv(SHIPPED_DATA / "raw" / "GSPC.OHLCV.daily.csv.gz")
    frame = data.frame
    assert len(frame) == 5031
    assert (frame.index[0].date().isoformat(), frame.index[-1].date().isoformat()) == ("1999-01-04", "2018-12-31")
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    assert data.repaired_rows == 0


def test_shipped_nasdaq_has_the_documented_shape_and_its_two_missing_volumes_carried_forward():
    data = read_ohlcv(SHIPPED_DATA / "raw" / "IXIC.OHLCV.daily.csv.gz")
    frame = data.frame
    assert len(frame) == 5031 and frame.index.equals(
        read_ohlcv(SHIPPED_DATA / "raw" / "GSPC.OHLCV.daily.csv.gz").frame.index
    )
    assert data.repaired_rows == 0 and data.volume_filled_rows == 2
    for day, before in (("2015-05-12", "2015-05-11"), ("2018-01-09", "2018-01-08")):
        assert frame.loc[day, "Volume"] == frame.loc[before, "Volume"] > 0
    assert (frame["Volume"] > 0).all()


def test_zero_volumes_are_carried_forward_and_counted(tmp_path, ohlcv):
    gaps = ohlcv.copy()
    gaps.iloc[[30, 31, 90, 91, 92, 93, 94], gaps.columns.get_loc("Volume")] = 0  # runs of 2 and 5 days
    data = read_ohlcv(write_csv(gaps, tmp_path / "x.csv"))
    assert data.volume_filled_rows == 7 and data.volume_unknown_rows == 0
    assert data.frame["Volume"].iloc[30] == data.frame["Volume"].iloc[31] == ohlcv["Volume"].iloc[29]
    assert (data.frame["Volume"].iloc[90:95] == ohlcv["Volume"].iloc[89]).all()


def test_zero_volumes_before_the_first_traded_day_are_unknown_and_the_features_start_later(data_dir, tmp_path, ohlcv):
    from datamodules.processed import build_dataset
    from datamodules.sources import import_csv

    early = ohlcv.copy()
    early.iloc[:250, early.columns.get_loc("Volume")] = 0  # yfinance's index histories start like this
    data = read_ohlcv(write_csv(early, tmp_path / "x.csv"))
    assert data.volume_unknown_rows == 250 and data.volume_filled_rows == 0
    assert data.frame["Volume"].iloc[:250].isna().all() and (data.frame["Volume"].iloc[250:] > 0).all()
    entry = import_csv(tmp_path / "x.csv", "EARLY", data_dir)
    assert entry.notes["volume_unknown_rows"] == 250
    built = build_dataset("EARLY", "a25", None, data_dir).entry  # sma_200 alone would drop 199 rows
    assert built.notes["warmup_rows_dropped"] >= 250 + 19  # vwap_20 and the volume mean start on day 250


@pytest.mark.parametrize(
    ("rows", "message"), [(slice(100, 106), "Volume is 0 on 6 days in a row"), (slice(None), "0 on every row")]
)
def test_volumes_that_cannot_be_carried_forward_are_refused(tmp_path, ohlcv, rows, message):
    gaps = ohlcv.copy()
    gaps.iloc[rows, gaps.columns.get_loc("Volume")] = 0
    with pytest.raises(DataError, match=message):
        read_ohlcv(write_csv(gaps, tmp_path / "x.csv"))
    if rows == slice(None):  # an index quoted with a column of zero volumes (yfinance's ^VIX) has no volume
        assert "Volume" not in read_ohlcv(tmp_path / "x.csv", require_volume=False).frame


def test_shipped_vix_is_repaired_by_clipping():
    data = read_ohlcv(SHIPPED_DATA / "raw" / "VIX.OHLCV.daily.csv.gz", require_volume=False)
    frame = data.frame
    assert len(frame) == 8695
    assert (frame.index[0].date().isoformat(), frame.index[-1].date().isoformat()) == ("1990-01-02", "2024-06-20")
    assert data.repaired_rows == 45
    assert (frame["High"] >= frame[["Open", "Close"]].max(axis=1)).all()
    assert (frame["Low"] <= frame[["Open", "Close"]].min(axis=1)).all()
    # 1992-02-11: open 19.24 above the recorded high 18.57 → high clipped up to the open
    assert frame.loc["1992-02-11", "High"] == 19.24


def test_headers_are_case_insensitive_and_adj_close_optional(tmp_path, ohlcv):
    path = write_csv(ohlcv.rename(columns=str.upper), tmp_path / "x.csv")
    frame = read_ohlcv(path).frame
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Volume"]
    np.testing.assert_array_equal(frame["Close"].to_numpy(), ohlcv["Close"].to_numpy())


def test_us_style_dates_parse(tmp_path, ohlcv):
    path = tmp_path / "x.csv"
    ohlcv.rename_axis("date").to_csv(path, date_format="%m/%d/%Y")
    assert read_ohlcv(path).frame.index.equals(ohlcv.index.rename("Date"))


def test_contradicting_high_low_are_clipped_and_counted(tmp_path, ohlcv):
    broken = ohlcv.copy()
    broken.iloc[10, broken.columns.get_loc("High")] = broken["Close"].iloc[10] * 0.999  # below the close
    broken.iloc[20, broken.columns.get_loc("Low")] = max(broken["Open"].iloc[20], broken["Close"].iloc[20]) * 1.0001
    data = read_ohlcv(write_csv(broken, tmp_path / "x.csv"))
    assert data.repaired_rows == 2
    assert data.frame["High"].iloc[10] == pytest.approx(max(ohlcv["Open"].iloc[10], ohlcv["Close"].iloc[10]))
    assert data.frame["Low"].iloc[20] == pytest.approx(min(ohlcv["Open"].iloc[20], ohlcv["Close"].iloc[20]))


def _corrupt(frame, kind):
    frame = frame.copy()
    if kind == "nan":
        frame.iloc[5, 3] = np.nan
    elif kind == "inf":
        frame.iloc[5, 1] = np.inf
    elif kind == "high_below_low":
        frame.iloc[5, 1] = frame.iloc[5, 2] * 0.9
    elif kind == "duplicate":
        frame.index = frame.index.where(np.arange(len(frame)) != 6, frame.index[5])
    elif kind == "unsorted":
        frame = frame.iloc[[1, 0, *range(2, len(frame))]]
    elif kind == "missing":
        frame = frame.drop(columns=["Low"])
    return frame


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or inf in OHLC"),
        ("inf", "NaN or inf in OHLC"),
        ("high_below_low", "High < Low"),
        ("duplicate", "duplicate date"),
        ("unsorted", "not sorted"),
        ("missing", "missing column(s) Low"),
    ],
)
def test_bad_rows_are_refused_with_a_named_reason(tmp_path, ohlcv, kind, message):
    path = write_csv(_corrupt(ohlcv, kind), tmp_path / "bad.csv")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_ohlcv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_volume_is_refused_unless_not_required(tmp_path, ohlcv):
    path = write_csv(ohlcv.drop(columns=["Volume"]), tmp_path / "novol.csv")
    with pytest.raises(DataError, match="missing column"):
        read_ohlcv(path)
    assert "Volume" not in read_ohlcv(path, require_volume=False).frame


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x1f\x8b\x08\x00garbage-not-gzip", "unreadable or corrupt"),
        (b"", "unreadable or corrupt"),
        (b"Date,Open,High,Low,Close,Volume\nnot-a-date,1,2,0.5,1.5,10\n", "unparseable dates"),
        (b"Date,Open,High,Low,Close,Volume\n2020-01-02,abc,2,0.5,1.5,10\n", "non-numeric"),
    ],
)
def test_unreadable_files_are_refused(tmp_path, content, message):
    path = tmp_path / ("bad.csv.gz" if content.startswith(b"\x1f\x8b") else "bad.csv")
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_ohlcv(path)


def test_truncated_gzip_is_refused(tmp_path):
    whole = (SHIPPED_DATA / "raw" / "GSPC.OHLCV.daily.csv.gz").read_bytes()
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="unreadable or corrupt"):
        read_ohlcv(path)
