"""Hostile and broken zip uploads are refused with a clear message and leave nothing behind."""

import stat
import zipfile

import pytest

from hierdemo.uploads import Limits, UploadError, data_root, safe_extract


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            if isinstance(name, zipfile.ZipInfo):
                zf.writestr(name, data)
            else:
                zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name, message", [
    ("../evil.png", "leaves its folder"),
    ("a/../../evil.png", "leaves its folder"),
    ("/etc/evil.png", "absolute path"),
    ("C:/evil.png", "absolute path"),
    ("..\\evil.png", "leaves its folder"),
])
def test_zip_slip_is_refused(tmp_path, name, message):
    z = make_zip(tmp_path / "x.zip", [("ok/a.png", b"1"), (name, b"2")])
    with pytest.raises(UploadError, match=message):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()


def test_symlink_entries_are_refused(tmp_path):
    info = zipfile.ZipInfo("cls/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = make_zip(tmp_path / "x.zip", [(info, "/etc/passwd")])
    with pytest.raises(UploadError, match="link"):
        safe_extract(z, tmp_path / "out")


def test_zip_bomb_and_limits(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", [("a/big.png", b"\0" * 20_000_000)])
    with pytest.raises(UploadError, match="compressed suspiciously well"):
        safe_extract(bomb, tmp_path / "o1")
    with pytest.raises(UploadError, match="more than 1 MB"):
        safe_extract(bomb, tmp_path / "o2", Limits(max_extracted_mb=1, max_ratio=10**9))
    many = make_zip(tmp_path / "many.zip", [(f"a/{i}.png", b"x") for i in range(30)])
    with pytest.raises(UploadError, match="30 entries"):
        safe_extract(many, tmp_path / "o3", Limits(max_files=10))
    with pytest.raises(UploadError, match="larger than 0 MB"):
        safe_extract(many, tmp_path / "o4", Limits(max_upload_mb=0))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_lying_size_headers_end_as_damaged_zip(tmp_path):
    z = make_zip(tmp_path / "x.zip", [("a/one.png", b"\1" * 3_000_000)])
    data = bytearray(z.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size in both headers
        at = data.index(sig) + offset
        data[at : at + 4] = (10).to_bytes(4, "little")  # claim 10 bytes
    z.write_bytes(bytes(data))
    with pytest.raises(UploadError, match="damaged"):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_zip_and_damaged_zip(tmp_path):
    (tmp_path / "x.zip").write_text("hello")
    with pytest.raises(UploadError, match="not a valid zip"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")


def test_extracts_skips_system_files_and_finds_root(tmp_path):
    z = make_zip(tmp_path / "x.zip", [
        ("my data/cats/a.png", b"1"), ("my data/dogs/b.png", b"2"), ("__MACOSX/my data/._a.png", b"3"),
        ("my data/.DS_Store", b"4"),
    ])
    out = safe_extract(z, tmp_path / "out")
    assert not (out / "__MACOSX").exists() and not (out / "my data" / ".DS_Store").exists()
    assert data_root(out) == out / "my data"
    assert (out / "my data" / "cats" / "a.png").read_bytes() == b"1"


def test_limits_from_environment(monkeypatch):
    monkeypatch.setenv("HIERDEMO_MAX_EPOCHS", "3")
    monkeypatch.setenv("HIERDEMO_MAX_IMAGES", "not-a-number")
    limits = Limits.from_env()
    assert limits.max_epochs == 3 and limits.max_images == Limits.max_images
