"""The Alignments page (AppTest, no browser) shows a refused probe (a FIFO, an archive declaring more
than the memory limit, a decompression-bomb image) as one readable error and keeps serving: the
next probe typed in the same session is used."""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
pytest.importorskip("PIL.Image")
from streamlit.testing.v1 import AppTest  # noqa: E402

from _apptest import ENTRY, TIMEOUT, by_label, errors  # noqa: E402

from otviz.models import build_model  # noqa: E402

FILE_BOX = "Path of a .npy, .npz, .safetensors or .pt file"


def black_png(path: Path, width: int, height: int) -> None:
    """A 1-bit black PNG written row by row (2 KB for 12000 x 12000)."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture
def fifo(tmp_path):
    """A FIFO, and a watcher that opens its write end whenever a reader blocks on it (then closes it),
    so that a reader which opens it cannot hang the suite: it reads an empty file instead."""
    path = tmp_path / "probe.npy"
    os.mkfifo(path)
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(0.2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # fails (ENXIO) while nobody reads
            except OSError:
                continue
            os.close(fd)

    watcher = threading.Thread(target=release, daemon=True)
    watcher.start()
    yield path
    stop.set()
    watcher.join()


def test_refused_probes_are_one_error_each_and_the_page_keeps_serving(tmp_path, monkeypatch, fifo):
    monkeypatch.setenv("OTVIZ_STORE", str(tmp_path / "runs.db"))
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25).eval()
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    program = tmp_path / "narrow.pt2"
    torch.export.save(ep, str(program))
    bomb = tmp_path / "bomb.npz"  # an entry whose .npy header declares 75 GiB, deflated from 1 MiB of zeros
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10_000_000, 1000)})
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + bytes(1 << 20))
    huge = tmp_path / "huge.npy"  # a sparse file that holds the 75 GiB its header declares
    with open(huge, "wb") as fh:
        fh.write(header.getvalue())
        fh.truncate(len(header.getvalue()) + 80_000_000_000)
    images = tmp_path / "images"
    images.mkdir()
    black_png(images / "big.png", 12000, 12000)
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).random((32, 1, 28, 28)).astype(np.float32))

    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/alignments.py").run()
    by_label(at.text_area, "Model paths on this machine (one per line)").set_value(str(program)).run()
    student = by_label(at.selectbox, "Student")
    student.set_value(next(o for o in student.options if o.startswith("narrow (torch.export program"))).run()
    by_label(at.selectbox, "Student layer").set_value("features.conv3.relu").run()
    assert not at.exception and not errors(at), errors(at)

    by_label(at.radio, "Probe inputs").set_value("file").run()
    for path, expected in ((fifo, "is a named pipe (FIFO); otviz reads only regular files"),
                           (bomb, "entry 'x' is truncated: its header declares 10000000x1000 float64"),
                           (huge, "would need 74.5 GiB (80,000,000,000 bytes), more than the memory limit "
                                  "of 2 GiB; nothing was read")):
        by_label(at.text_input, FILE_BOX).set_value(str(path)).run()
        assert not at.exception, [e.value for e in at.exception]
        errs = errors(at)
        assert len(errs) == 1 and errs[0].startswith("**Probe inputs**") and expected in errs[0], errs

    by_label(at.radio, "Probe inputs").set_value("images").run()
    by_label(at.text_input, "Path of a folder of images").set_value(str(images)).run()
    assert not at.exception, [e.value for e in at.exception]
    errs = errors(at)
    assert len(errs) == 1 and "big.png is 12000x12000 pixels" in errs[0] and "decompression bomb" in errs[0], errs

    # the same session goes on with a good probe
    by_label(at.radio, "Probe inputs").set_value("file").run()
    by_label(at.text_input, FILE_BOX).set_value(str(good)).run()
    assert not at.exception and not errors(at), errors(at)
    assert {m.label: m.value for m in at.metric}["Neurons"] == "64 x 16"
    assert "Probe: 32 inputs" in " ".join(c.value for c in at.caption)
