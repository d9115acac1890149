"""otviz._files: only regular files are opened, sizes are checked before reading, JSON is capped."""

from __future__ import annotations

import os
import threading

import pytest

from otviz._files import check_regular_file, loads_json, open_regular, read_bytes, read_json


def _within(seconds, fn, *args, **kwargs):
    """Run fn in a thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "probe.npy"
    os.mkfifo(fifo)
    for fn in (check_regular_file, open_regular):
        with pytest.raises(ValueError, match=r"named pipe \(FIFO\).*only regular files"):
            _within(5, fn, fifo, "probe file")
    with pytest.raises(ValueError, match="FIFO"):
        _within(5, read_json, fifo, "config")


def test_link_to_a_device_is_refused_and_named(tmp_path):
    link = tmp_path / "x.pt"
    link.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"link to '/dev/zero'.*character device"):
        _within(5, read_bytes, link, "model file", max_bytes=1024)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        check_regular_file(tmp_path, "model file")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_regular_file(tmp_path / "nope.pt", "model file")


def test_size_is_checked_before_reading(tmp_path):
    big = tmp_path / "config.json"
    with open(big, "wb") as fh:  # sparse: 6 GiB declared, nothing written
        fh.truncate(6 * 1024**3)
    with pytest.raises(ValueError, match=r"6 GiB, above the limit of 64 MiB"):
        _within(5, read_json, big, "config")
    assert check_regular_file(big, "f") == 6 * 1024**3


def test_read_bytes_returns_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello")
    assert read_bytes(f, max_bytes=5) == b"hello"
    with pytest.raises(ValueError, match="above the limit"):
        read_bytes(f, max_bytes=4)


def test_json_depth_and_syntax(tmp_path):
    deep = tmp_path / "config.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        read_json(deep, "config")
    # brackets inside strings do not count
    text = '{"a": "' + '[' * 100 + '"}'
    assert loads_json(text) == {"a": "[" * 100}
    assert loads_json('{"a": [1, {"b": "\\"]"}]}', max_depth=3) == {"a": [1, {"b": '"]'}]}
    with pytest.raises(ValueError, match="not valid JSON: .* line 1"):
        loads_json("{nope", "config.json")
    bad = tmp_path / "b.json"
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json(bad)
