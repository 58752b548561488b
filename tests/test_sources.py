"""Raw OHLCV reading: the shipped files, header normalisation, repairs, and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHIPPED_DATA, write_csv

from common.errors import DataError
from datamodules.plausibility import MAX_DAY_RATIO, MAX_GAP_DAYS, MAX_RANGE_RATIO, MAX_SAME_CLOSE_ROWS, implausible
from datamodules.sources import import_csv, raw_name, read_ohlcv, split_tickers, ticker_name


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


@pytest.mark.parametrize(
    ("given", "registered"),
    [("SPY", "SPY"), (" ^gspc ", "GSPC"), ("BRK-B", "BRK-B"), ("brk.b", "BRK.B"), ("000001.SS", "000001.SS"),
     ("EURUSD=X", "EURUSD=X"), ("GC=F", "GC=F"), ("A" * 20, "A" * 20)],
)  # fmt: skip
def test_tickers_in_yfinances_spelling_name_files(given, registered):
    assert ticker_name(given) == registered
    assert raw_name(given) == f"{registered}.OHLCV.daily"


BAD_TICKERS = ["", "  ", "../x", "x/..", "/abs", "~/x", "a\\b", ".hidden", "-x", "=X", "^^GSPC", "G^SPC", "S P", "Ä"]


@pytest.mark.parametrize("ticker", [*BAD_TICKERS, "A" * 21])
def test_tickers_that_could_leave_their_folder_or_hide_are_refused(ticker):
    with pytest.raises(DataError, match="invalid ticker"):
        ticker_name(ticker)
    with pytest.raises(DataError, match="invalid ticker"):
        raw_name(ticker)


def test_split_tickers_keeps_the_download_spelling_and_refuses_empty_items():
    assert split_tickers("SPY, ^DJI") == ["SPY", "^DJI"]
    for text in ("", "SPY,", ",SPY", "SPY,,DIA"):
        with pytest.raises(DataError, match="empty ticker"):
            split_tickers(text)


@pytest.mark.parametrize(("ticker", "volume"), [("GSPC", True), ("IXIC", True), ("VIX", False)])
def test_shipped_series_are_plausible_with_margin(ticker, volume):
    """The bounds leave room: half the gap, and less than ×3 a day (VIX's record, 2018-02-05, is ×2.16)."""
    frame = read_ohlcv(SHIPPED_DATA / "raw" / f"{ticker}.OHLCV.daily.csv.gz", volume).frame
    assert implausible(frame) == {}
    gaps = np.diff(frame.index.values).astype("timedelta64[D]").astype(int)
    assert gaps.max() == 7 <= MAX_GAP_DAYS / 2  # 2001-09-10 → 2001-09-17 in all three
    prices, previous = frame[["Open", "High", "Low", "Close"]].to_numpy()[1:], frame["Close"].to_numpy()[:-1, None]
    assert np.exp(np.abs(np.log(prices / previous)).max()) < 3 < MAX_DAY_RATIO


def test_an_implausible_series_is_refused_naming_rule_date_and_value_unless_allowed(data_dir, tmp_path, ohlcv):
    spiked = ohlcv.copy()
    spiked.iloc[300, spiked.columns.get_loc("Close")] *= 1000  # the next day is back: a second jump
    path = write_csv(spiked, tmp_path / "spike.csv")
    message = r"rule jump: Close on 2002-02-25 is 1012× the previous close \(89.81\d+ → 90899.3; .*\(also: range\)"
    with pytest.raises(DataError, match=message):
        read_ohlcv(path)
    entry = import_csv(path, "SPIKE", data_dir, allow_implausible=True)
    assert set(entry.notes["implausible_allowed"]) == {"jump", "range"}
    assert "2002-02-25" in entry.notes["implausible_allowed"]["jump"]
    assert "implausible_allowed" not in import_csv(write_csv(ohlcv, tmp_path / "ok.csv"), "OK", data_dir).notes


def _with_gap(frame, days):
    """Rows 100 on moved so that `days` calendar days separate rows 99 and 100."""
    shift = pd.Timedelta(days=days) - (frame.index[100] - frame.index[99])
    return frame.set_axis(frame.index.where(np.arange(len(frame)) < 100, frame.index + shift))


def _with_move(frame, ratio):
    frame.iloc[100:, :4] = frame.iloc[100:, :4] * ratio / (frame["Close"].iloc[100] / frame["Close"].iloc[99])
    return frame


def _with_same_close(frame, rows):
    frame.iloc[100 : 100 + rows, :4] = frame["Close"].iloc[100]
    return frame


@pytest.mark.parametrize(
    ("change", "within", "beyond", "rule"),
    [
        (_with_gap, MAX_GAP_DAYS, MAX_GAP_DAYS + 1, "gap"),
        (_with_move, MAX_DAY_RATIO * 0.97, MAX_DAY_RATIO * 1.01, "jump"),  # High/Low stay within ~1.3% of the close
        (_with_move, 1 / MAX_DAY_RATIO / 0.97, 1 / MAX_DAY_RATIO / 1.01, "jump"),
        (_with_same_close, MAX_SAME_CLOSE_ROWS, MAX_SAME_CLOSE_ROWS + 1, "stale"),
    ],
)
def test_each_rule_holds_at_its_bound_and_breaks_just_beyond(ohlcv, change, within, beyond, rule):
    assert implausible(change(ohlcv.copy(), within)) == {}
    assert list(implausible(change(ohlcv.copy(), beyond))) == [rule]


def test_a_range_and_a_future_date_are_implausible(ohlcv):
    wide = ohlcv.copy()
    wide.iloc[0, wide.columns.get_loc("High")] = wide["Low"].iloc[0] * MAX_RANGE_RATIO * 1.01  # the first row too
    assert list(implausible(wide)) == ["range"]
    late = ohlcv.set_axis(pd.bdate_range(pd.Timestamp.now() - pd.Timedelta(days=400), periods=len(ohlcv)))
    assert list(implausible(late)) == ["future"]
