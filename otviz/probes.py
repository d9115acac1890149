"""Probe inputs for a model, read in bounded memory from files a user gives.

A probe is the batch of inputs whose responses define the neurons compared by
otviz. This module reads one from the sources the command line and the
dashboard accept:

:func:`load_probe` reads a file of tensors or arrays (:func:`load_tensor_file`:
``.npy``, ``.npz``, ``.safetensors``, ``.pt`` with ``weights_only``), a folder
of images (:func:`load_image_folder`, resized to the model's input size when
the model states it), or a text file of sentences, one per line
(:func:`tokenize_sentences`, with the model's tokenizer, into a
``BatchEncoding`` with padding and truncation). :func:`shipped_probe` gives
held-out images of otviz's shipped datasets, resized for the model.
:func:`check_probe` compares a probe with what the model declares (dtype,
rank, channels, image size, vocabulary, sequence length) and names the fix.

Probe files are read in bounded memory: only regular files are opened (a FIFO
or a device is refused at once); a ``.npy`` file, each member of a ``.npz``
archive and a ``.safetensors`` file are sized from their headers against
``max_bytes`` before their data are read or decompressed; each image is sized
from its header (at most :data:`MAX_IMAGE_PIXELS`) and decoded, resized and
stored before the next is read; a text file is streamed, each line cut to
``max_length * CHARS_PER_TOKEN`` characters before tokenising. A folder or a
text file gives at most :data:`MAX_PROBE_INPUTS` inputs unless ``limit``
picks the first ones.
"""

from __future__ import annotations

import codecs
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._files import check_regular_file, open_regular
from ._memory import DEFAULT_MAX_BYTES, check_limit
from .external import (  # the model side: what a probe is checked against, shared readers
    ExternalModel,
    IMAGE_EXTENSIONS,
    PathLike,
    Probe,
    TENSOR_EXTENSIONS,
    _as_path,
    _first_line,
    _read_state_dict,
    _require,
    safetensors_header,
)

__all__ = [
    "load_probe",
    "load_tensor_file",
    "load_image_folder",
    "tokenize_sentences",
    "shipped_probe",
    "check_probe",
    "MAX_PROBE_INPUTS",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_FILE_BYTES",
    "MAX_TEXT_READ_BYTES",
    "CHARS_PER_TOKEN",
    "MAX_NPZ_MEMBERS",
]


#: Most inputs (images or sentences) a probe read from a folder or a text file may hold;
#: pass ``limit=`` to take the first ones of a larger set.
MAX_PROBE_INPUTS: int = 10_000
#: Most pixels of one image of a folder, as decoded (after JPEG draft mode): 40 megapixels
#: (e.g. 8000 x 5000). A larger image is refused from its header, before it is decoded.
MAX_IMAGE_PIXELS: int = 40_000_000
#: Largest image file read: 256 MiB.
MAX_IMAGE_FILE_BYTES: int = 256 * 1024**2
#: Most bytes of a text file of sentences read (the first lines up to ``limit`` are used).
MAX_TEXT_READ_BYTES: int = 64 * 1024**2
#: Characters kept of a sentence per token of ``max_length`` before tokenising: a line is cut at
#: ``max_length * CHARS_PER_TOKEN`` characters, which the truncated tokens of ordinary text never reach
#: (a word-piece or BPE token rarely spans more than 20 characters).
CHARS_PER_TOKEN: int = 64
#: Most members of a ``.npz`` probe archive.
MAX_NPZ_MEMBERS: int = 1024


def _probe_limit(nbytes: int, max_bytes: int | None, what: str) -> None:
    """Refuse a probe declaring more than ``max_bytes`` (a :class:`ModelTooLargeError`), before reading it."""
    check_limit(nbytes, max_bytes, what, of="", done="nothing was read",
                fix="Probe with fewer inputs (limit=, a smaller file), or raise the limit (max_bytes=...) if this "
                    "machine has the memory.")


def _to_tensor(arr: Any, what: str) -> torch.Tensor:
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu()
    else:
        a = np.asarray(arr)
        if a.dtype == object or a.dtype.kind in "USV":
            raise ValueError(f"{what} has dtype {a.dtype}; probe arrays must be numeric")
        if a.ndim == 0:  # np.ascontiguousarray would make it (1,)
            raise ValueError(f"{what} is a single number (shape ()); a probe needs a batch dimension: save "
                             "the inputs stacked along a first axis (np.save(path, x[None]) for one input)")
        if not a.dtype.isnative:  # a big-endian file: torch takes native byte order only
            a = a.astype(a.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.dtype == torch.float64:
        t = t.float()  # models run in float32; a float64 probe is a numpy default, not a choice
    if t.ndim == 0:
        raise ValueError(f"{what} is a single number (shape ()); a probe needs a batch dimension: save the "
                         "inputs stacked along a first axis (x.unsqueeze(0) for one input)")
    if t.shape[0] == 0:
        raise ValueError(f"{what} has shape {tuple(t.shape)}; a probe needs a batch axis with at least one input")
    return t


def _several(named: Mapping[str, Any], what: str) -> torch.Tensor | dict[str, torch.Tensor]:
    tensors = {k: _to_tensor(v, f"{what}[{k!r}]") for k, v in named.items()}
    if not tensors:
        raise ValueError(f"{what} holds no array")
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    return tensors


def _npy_header(fh: Any, what: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """``(shape, dtype, fortran_order)`` of the ``.npy`` stream ``fh``, read from its header only."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 - a damaged header fails in numpy's parser in many ways
        raise ValueError(f"{what} is not a numpy array or is corrupt ({type(exc).__name__}: "
                         f"{_first_line(exc, 200)}); save arrays with np.save / np.savez") from None
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (a pickled array), which otviz does not unpickle; "
                         "save numeric arrays with np.save / np.savez")
    if dtype.kind not in "biufc":
        raise ValueError(f"{what} has dtype {dtype}; probe arrays must be numeric")
    return tuple(int(d) for d in shape), dtype, bool(fortran)


def _npy_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * int(dtype.itemsize)


def _npy_data(fh: Any, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, what: str) -> np.ndarray:
    """Read exactly the array's bytes from ``fh`` (after its header), refusing a short or overlong stream."""
    nbytes = _npy_nbytes(shape, dtype)
    flat = np.empty(nbytes // max(dtype.itemsize, 1) if dtype.itemsize else 0, dtype=dtype)
    view = memoryview(flat.view(np.uint8).reshape(-1)) if nbytes else memoryview(b"")
    got = 0
    try:
        while got < nbytes:
            n = fh.readinto(view[got:got + (16 << 20)])
            if not n:
                break
            got += n
        extra = fh.read(1)  # reaching the end lets zipfile check the entry's CRC
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{what} is corrupt ({_first_line(exc, 200)}); write the file again with "
                         "np.save / np.savez") from None
    if got < nbytes:
        raise ValueError(f"{what} is truncated: its header declares {_shape_text(shape)} {dtype} "
                         f"({nbytes:,} bytes) but only {got:,} bytes follow; write the file again with "
                         "np.save / np.savez")
    if extra:
        raise ValueError(f"{what} is corrupt: more data follows the {nbytes:,} bytes its header declares "
                         f"({_shape_text(shape)} {dtype}); write the file again with np.save / np.savez")
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "a scalar"


def _read_npy(p: Path, max_bytes: int | None) -> np.ndarray:
    with open_regular(p, "probe file") as fh:
        size = os.fstat(fh.fileno()).st_size
        shape, dtype, fortran = _npy_header(fh, str(p))
        nbytes = _npy_nbytes(shape, dtype)
        if not shape:
            raise ValueError(f"the array in {p} is a single number (shape ()); a probe needs a batch dimension: "
                             "save the inputs stacked along a first axis (np.save(path, x[None]) for one input)")
        _probe_limit(nbytes, max_bytes, f"the probe array {p} ({_shape_text(shape)} {dtype})")
        if size - fh.tell() < nbytes:
            raise ValueError(f"{p} is truncated: its header declares {_shape_text(shape)} {dtype} "
                             f"({nbytes:,} bytes) but the file holds {size - fh.tell():,} bytes of data; "
                             "write the file again with np.save")
        return _npy_data(fh, shape, dtype, fortran, str(p))


def _zip_entries(fh: Any) -> int | None:
    """Entries a zip archive declares in its end record (read before its directory is parsed), or None."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # pragma: no cover - a future Python without it: ZipFile parses unchecked
        return None
    try:
        rec = end_record(fh)
    except OSError:
        return None
    finally:
        fh.seek(0)
    return None if not rec else int(rec[zipfile._ECD_ENTRIES_TOTAL])


def _read_npz(p: Path, max_bytes: int | None) -> dict[str, np.ndarray]:
    with open_regular(p, "probe file") as fh:
        entries = _zip_entries(fh)
        if entries is not None and entries > MAX_NPZ_MEMBERS:
            raise ValueError(f"{p} declares {entries:,} entries, more than the {MAX_NPZ_MEMBERS} a probe "
                             "archive may hold; save the probe's arrays (a few named inputs) with np.savez")
        try:
            z = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{p} is not a numpy .npz file ({_first_line(exc, 200)}); save arrays with "
                             "np.savez") from None
        with z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            if len(infos) > MAX_NPZ_MEMBERS:
                raise ValueError(f"{p} holds {len(infos):,} entries, more than the {MAX_NPZ_MEMBERS} a probe "
                                 "archive may hold; save the probe's arrays (a few named inputs) with np.savez")
            headers = []
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{p} entry {info.filename!r} is not a .npy array; a probe .npz holds "
                                     "only arrays (np.savez)")
                key = info.filename[:-4]
                what = f"{p} entry {key!r}"
                try:
                    with z.open(info) as member:
                        shape, dtype, fortran = _npy_header(member, what)
                        stored = info.file_size - member.tell()  # data bytes the archive declares
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise ValueError(f"{what} cannot be read ({_first_line(exc, 200)}); save arrays with "
                                     "np.savez or np.savez_compressed") from None
                if not shape:
                    raise ValueError(f"{what} is a single number (shape ()); a probe needs a batch dimension: "
                                     "save the inputs stacked along a first axis (x[None] for one input)")
                nbytes = _npy_nbytes(shape, dtype)
                if stored < nbytes:
                    raise ValueError(f"{what} is truncated: its header declares {_shape_text(shape)} {dtype} "
                                     f"({nbytes:,} bytes) but only {max(stored, 0):,} bytes follow; write the file "
                                     "again with np.savez")
                total += nbytes
                headers.append((info, key, shape, dtype, fortran))
            _probe_limit(total, max_bytes, f"the probe arrays of {p} (by their .npy headers)")
            arrays = {}
            for info, key, shape, dtype, fortran in headers:
                what = f"{p} entry {key!r}"
                try:
                    with z.open(info) as member:
                        _npy_header(member, what)
                        arrays[key] = _npy_data(member, shape, dtype, fortran, what)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise ValueError(f"{what} is corrupt ({_first_line(exc, 200)}); write the file again "
                                     "with np.savez") from None
            return arrays


def load_tensor_file(path: PathLike, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Probe:
    """Read a probe batch from a file of tensors or arrays, unpickling nothing.

    Only a regular file is opened (a FIFO or a device is refused at once), and
    the bytes a file declares are checked against `max_bytes` before its data
    are read: the ``.npy`` header (shape and dtype) of a ``.npy`` file and of
    every member of a ``.npz`` archive (before anything is decompressed), the
    header of a ``.safetensors`` file, the sizes a ``.pt`` archive declares.

    Parameters
    ----------
    path : path-like
        ``.npy`` (one array), ``.npz`` (one or several named arrays, at most
        :data:`MAX_NPZ_MEMBERS`), ``.safetensors`` (one or several named
        tensors) or ``.pt``/``.pth`` (a tensor, a dict of tensors or a
        list/tuple of tensors, read with ``torch.load(weights_only=True)``).
    max_bytes : int or None, default 2 GiB
        Refuse a file that declares more bytes than this before reading it.

    Returns
    -------
    torch.Tensor, tuple or dict
        One array: a tensor. Several named arrays: a dict (passed to the model
        as keyword arguments, e.g. ``input_ids`` and ``attention_mask``). A
        list/tuple: a tuple (positional arguments). Batch on the first axis;
        float64 becomes float32, other dtypes are kept (int64 token ids).

    Raises
    ------
    ModelTooLargeError
        The arrays declare more than `max_bytes` (a ValueError; nothing was read).
    ValueError
        Unknown extension, not a regular file, object (pickled) arrays,
        truncated or corrupt arrays, non-numeric arrays, arrays without a batch
        axis (0-d) or empty, or content of another kind.
    """
    p = _as_path(path, "probe file")
    if p.is_dir():
        raise ValueError(f"{p} is a directory; pass a file ({', '.join(TENSOR_EXTENSIONS)}), or use "
                         "load_image_folder for a folder of images")
    suffix = p.suffix.lower()
    if suffix not in TENSOR_EXTENSIONS:
        raise ValueError(f"{p} is not a probe file otviz reads: pass {', '.join(TENSOR_EXTENSIONS)}, a folder of "
                         "images, or a .txt file of sentences (one per line)")
    check_regular_file(p, "probe file")  # a FIFO or a device: refused before any reader opens it
    if suffix == ".npy":
        return _to_tensor(_read_npy(p, max_bytes), f"the array in {p}")
    if suffix == ".npz":
        return _several(_read_npz(p, max_bytes), f"the arrays of {p}")
    if suffix == ".safetensors":
        header = safetensors_header(p)
        _probe_limit(sum(e["nbytes"] for e in header.values()), max_bytes, f"the probe tensors {p}")
        st = _require("safetensors.torch", "Reading a .safetensors file")
        try:
            tensors = st.load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise ValueError(f"{p} cannot be read as a safetensors file ({_first_line(exc, 200)}); write it "
                             "again with safetensors.torch.save_file") from None
        return _several(tensors, f"the tensors of {p}")
    obj = _read_state_dict(p, max_bytes)
    if isinstance(obj, torch.Tensor):
        return _to_tensor(obj, f"the tensor in {p}")
    if isinstance(obj, Mapping) and all(isinstance(k, str) for k in obj):
        return _several(obj, f"the tensors of {p}")
    if isinstance(obj, (list, tuple)) and obj:
        return tuple(_to_tensor(v, f"{p}[{i}]") for i, v in enumerate(obj))
    raise ValueError(f"{p} holds a {type(obj).__name__}; a probe file holds a tensor, a dict of tensors "
                     "or a list of tensors")


def _image_header(Image: Any, f: Path, mode: str | None, size: tuple[int, int] | None) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height) as it will be decoded)`` of an image file, from its header only.

    With `size`, a JPEG is put in draft mode (decoded at 1/2, 1/4 or 1/8 scale, still at least
    `size`), and the decoded size is the drafted one. Refuses an image above
    :data:`MAX_IMAGE_PIXELS` (a decompression bomb) before it is decoded.
    """
    with open_regular(f, "image file", max_bytes=MAX_IMAGE_FILE_BYTES) as fh:
        with _open_image(Image, fh, f) as im:
            src_mode, declared = im.mode, im.size
            if size is not None:
                im.draft(mode or ("L" if src_mode in ("L", "1", "I", "I;16", "F") else "RGB"), (size[1], size[0]))
            decoded = im.size
    if decoded[0] * decoded[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"{f} is {declared[0]}x{declared[1]} pixels ({declared[0] * declared[1]:,}), more than "
                         f"the {MAX_IMAGE_PIXELS:,} an image of a probe folder may have (a decompression bomb "
                         "is refused before it is decoded); shrink the image first, e.g. with "
                         "PIL.Image.thumbnail")
    return src_mode, decoded


def _open_image(Image: Any, fh: Any, f: Path) -> Any:
    """``Image.open`` on an opened file (header only); Pillow's errors become one ValueError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is the refusal that follows
            return Image.open(fh)
    except Image.DecompressionBombError:
        raise ValueError(f"{f} declares more pixels than Pillow decodes (Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS:,}, and otviz reads at most {MAX_IMAGE_PIXELS:,}): a "
                         "decompression bomb, refused before it is decoded; shrink the image first") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise ValueError(f"{f} cannot be read as an image ({_first_line(exc, 150)})") from None


def load_image_folder(folder: PathLike, *, size: int | tuple[int, int] | None = None,
                      channels: int | None = None, limit: int | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      max_bytes: int | None = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """Read the images of a folder into a float batch ``(N, C, H, W)``, one image at a time.

    Files are taken in name order (extensions :data:`IMAGE_EXTENSIONS`), converted
    to grayscale (``channels=1``) or RGB (``channels=3``; default: grayscale
    when every image is, else RGB), resized with bilinear filtering to `size`,
    and scaled to ``[0, 1]``; with `mean` and `std`, each channel ``c`` becomes
    ``(x_c - mean_c) / std_c``.

    Memory stays bounded: every image's header is read first (its size and
    mode, without decoding), an image above :data:`MAX_IMAGE_PIXELS` or a file
    above :data:`MAX_IMAGE_FILE_BYTES` is refused, and the result's bytes are
    checked against `max_bytes`; then each image is decoded (a JPEG at a
    reduced scale, ``Image.draft``), resized and written into the result before
    the next one is read, so at most one full-size image is held at a time.

    Parameters
    ----------
    folder : path-like
        The folder (not searched recursively).
    size : int or (int, int), optional
        ``(H, W)`` to resize to (an int: square). Default: keep the images'
        size, which must then be the same for all.
    channels : {1, 3}, optional
        Channels of the result.
    limit : int, optional
        Read at most this many images (the first in name order). Without it a
        folder may hold at most :data:`MAX_PROBE_INPUTS` images.
    mean, std : sequence of float, optional
        Per-channel normalisation (e.g. ImageNet's).
    max_bytes : int or None, default 2 GiB
        Largest result (``N * C * H * W * 4`` bytes), checked before any image is decoded.

    Returns
    -------
    torch.Tensor
        float32, ``(N, C, H, W)``.

    Raises
    ------
    ModelTooLargeError
        The batch would exceed `max_bytes` (a ValueError; no image was decoded).
    ValueError
        No image in the folder, more than :data:`MAX_PROBE_INPUTS` without
        `limit`, an image file that is not a regular file, an unreadable or
        oversized image, images of different sizes without `size`, bad
        `channels`, `mean`/`std` of the wrong length.
    ImportError
        If Pillow is not installed (``pip install Pillow``).
    """
    d = _as_path(folder, "image folder")
    if not d.is_dir():
        raise ValueError(f"{d} is a file; pass a folder of images ({', '.join(IMAGE_EXTENSIONS)})")
    Image = _require("PIL.Image", "Reading a folder of images")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir())
    if limit is not None:
        files = files[: max(0, int(limit))]
    elif len(files) > MAX_PROBE_INPUTS:
        raise ValueError(f"the folder {d} has {len(files):,} images, more than the {MAX_PROBE_INPUTS:,} a probe "
                         "may hold; pass limit= to read the first ones")
    if not files:
        raise ValueError(f"the folder {d} has no image file ({', '.join(IMAGE_EXTENSIONS)})")
    if isinstance(size, int):
        size = (size, size)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] < 1 or size[1] < 1:
            raise ValueError(f"size must be positive (H, W), got {size}")
    mode = None if channels is None else ("L" if channels == 1 else "RGB")
    heads = [_image_header(Image, f, mode, size) for f in files]  # headers only: nothing decoded yet
    if channels is None:
        channels = 1 if all(m in ("L", "1", "I", "I;16", "F") for m, _ in heads) else 3
    mode = "L" if channels == 1 else "RGB"
    if size is None:
        sizes = {s for _, s in heads}
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise ValueError(f"the images of {d} have different sizes ({shown}); pass size=(H, W) to resize them")
        w, h = heads[0][1]
        size = (h, w)
    _probe_limit(len(files) * channels * size[0] * size[1] * 4, max_bytes,
                 f"the {len(files)} images of {d} as a float32 batch ({channels}x{size[0]}x{size[1]} each)")
    x = torch.empty(len(files), channels, size[0], size[1], dtype=torch.float32)
    for i, f in enumerate(files):
        with open_regular(f, "image file", max_bytes=MAX_IMAGE_FILE_BYTES) as fh:
            with _open_image(Image, fh, f) as im:
                im.draft(mode, (size[1], size[0]))
                if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:  # the file changed since its header was read
                    _image_header(Image, f, mode, size)
                try:
                    if im.mode != mode:
                        im = im.convert(mode)
                    if im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=3.0)
                    a = np.asarray(im, dtype=np.float32)
                except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
                    raise ValueError(f"{f} cannot be read as an image ({_first_line(exc, 150)})") from None
        x[i] = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x /= 255.0
    if mean is not None or std is not None:
        m = torch.tensor(list(mean if mean is not None else [0.0] * channels), dtype=torch.float32)
        s = torch.tensor(list(std if std is not None else [1.0] * channels), dtype=torch.float32)
        if m.numel() != channels or s.numel() != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {m.numel()} and {s.numel()}")
        if bool((s <= 0).any()):
            raise ValueError(f"std must be positive, got {s.tolist()}")
        x = (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
    return x


def _text_lines(p: Path, max_lines: int, max_chars: int) -> list[str]:
    """The first ``max_lines`` non-blank lines of a UTF-8 file, each cut to ``max_chars`` characters.

    The file is streamed: at most ``4 * max_chars`` bytes of a line are kept (the rest of a
    longer line is skipped in 1 MiB pieces) and at most :data:`MAX_TEXT_READ_BYTES` are read in all.
    """
    keep = 4 * max_chars + 4  # UTF-8: at most 4 bytes a character
    out: list[str] = []
    read = 0
    with open_regular(p, "text file") as fh:
        while len(out) < max_lines and read < MAX_TEXT_READ_BYTES:
            raw = fh.readline(keep)
            if not raw:
                break
            read += len(raw)
            if not raw.endswith(b"\n"):  # a line longer than we keep: skip its rest
                while read < MAX_TEXT_READ_BYTES:
                    rest = fh.readline(1 << 20)
                    read += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
            dec = codecs.getincrementaldecoder("utf-8")()
            try:
                text = dec.decode(raw, final=raw.endswith(b"\n"))  # a character cut at the end is dropped
            except UnicodeDecodeError:
                raise ValueError(f"{p} is not UTF-8 text; pass a text file with one sentence per line") from None
            if not out and text.startswith("\ufeff"):
                text = text[1:]
            for line in text.splitlines():
                line = line[:max_chars].strip()
                if line and len(out) < max_lines:
                    out.append(line)
    return out


def tokenize_sentences(source: PathLike | Sequence[str], tokenizer: Any, *, max_length: int = 128,
                       limit: int | None = None) -> Any:
    """Tokenise sentences (a text file, one per line, or a list) into a padded batch.

    A file is streamed, never read whole: only its first `limit` non-blank lines are
    read (at most :data:`MAX_PROBE_INPUTS` without `limit`, and at most
    :data:`MAX_TEXT_READ_BYTES` of the file), and each sentence is cut to
    ``max_length * CHARS_PER_TOKEN`` characters before it is tokenised (more than
    `max_length` tokens of ordinary text take), so that a huge line costs neither
    time nor memory in the tokenizer.

    Parameters
    ----------
    source : path-like or sequence of str
        A UTF-8 text file (blank lines are skipped) or the sentences.
    tokenizer : transformers tokenizer
        The model's tokenizer (:attr:`ExternalModel.tokenizer`).
    max_length : int, default 128
        Longer sentences are truncated to this many tokens.
    limit : int, optional
        Use at most this many sentences (the first).

    Returns
    -------
    transformers.BatchEncoding
        ``tokenizer(sentences, padding=True, truncation=True,
        max_length=max_length, return_tensors="pt")``: ``input_ids``,
        ``attention_mask`` (1 = real token, 0 = padding) and what else the
        tokenizer returns, each ``(N, L)``; pass it to the model as keyword
        arguments.

    Raises
    ------
    ValueError
        No tokenizer, no sentence, more than :data:`MAX_PROBE_INPUTS` sentences
        without `limit`, a file that is not a regular file or not UTF-8 text, or
        a bad `max_length`.
    """
    if tokenizer is None:
        raise ValueError(
            "this model has no tokenizer, so sentences cannot be turned into token ids: put the tokenizer's "
            "files (tokenizer.json, or vocab.txt and tokenizer_config.json) in the model directory, or pass "
            "token ids as a tensor file (.npz with input_ids and attention_mask)")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    max_chars = max_length * CHARS_PER_TOKEN
    n = MAX_PROBE_INPUTS + 1 if limit is None else max(0, int(limit))
    if isinstance(source, (str, os.PathLike)):
        p = _as_path(source, "text file")
        if p.is_dir():
            raise ValueError(f"{p} is a directory; pass a text file with one sentence per line")
        sentences = _text_lines(p, n, max_chars)
        what = str(p)
    else:
        sentences, what = [], "the sentences"
        for s in source:
            s = str(s)[:max_chars].strip()
            if s:
                sentences.append(s)
                if len(sentences) >= n:
                    break
    if limit is None and len(sentences) > MAX_PROBE_INPUTS:
        raise ValueError(f"{what} holds more than {MAX_PROBE_INPUTS:,} sentences, the most a probe may hold; "
                         "pass limit= to use the first ones")
    if not sentences:
        raise ValueError(f"{what} holds no sentence; write one sentence per line")
    return tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def shipped_probe(dataset: str, n: int = 256, *, seed: int = 0, size: int | tuple[int, int] | None = None,
                  channels: int | None = None) -> torch.Tensor:
    """Held-out images of a shipped dataset (``mnist5k``, ``digits``), shaped for a model.

    The test split of :func:`otviz.data.load_split` is sampled (``n`` images,
    fixed `seed`), resized bilinearly to `size` and repeated to `channels`
    (grey to RGB), values as stored (in ``[0, 1]``).

    Parameters
    ----------
    dataset : str
        A dataset of :data:`otviz.data.DATASETS`.
    n : int, default 256
        Number of images (at most the test split's size).
    seed : int, default 0
        Sampling seed.
    size : int or (int, int), optional
        ``(H, W)`` to resize to.
    channels : int, optional
        Channels of the result (the grey image repeated).

    Returns
    -------
    torch.Tensor
        float32, ``(n, C, H, W)``.
    """
    from .data import load_split

    X = torch.as_tensor(load_split(dataset)[2], dtype=torch.float32)
    if X.ndim == 3:
        X = X.unsqueeze(1)
    gen = torch.Generator().manual_seed(int(seed))
    X = X[torch.randperm(len(X), generator=gen)[: max(1, min(int(n), len(X)))]]
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if tuple(X.shape[-2:]) != size:
            X = F.interpolate(X, size=size, mode="bilinear", align_corners=False)
    if channels is not None and channels != X.shape[1]:
        if X.shape[1] != 1:
            raise ValueError(f"cannot turn {X.shape[1]}-channel images into {channels} channels")
        X = X.repeat(1, int(channels), 1, 1)
    return X


def load_probe(source: PathLike, model: ExternalModel | None = None, *, limit: int | None = None,
               max_length: int = 128, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Probe:
    """Read probe inputs for `model` from a path: a tensor file, an image folder or a text file.

    - a directory: :func:`load_image_folder`, resized to the model's declared
      image size and channels (:attr:`InputSpec.image_size`);
    - a ``.txt`` file: :func:`tokenize_sentences` with the model's tokenizer;
    - a tensor file: :func:`load_tensor_file`.

    The result is checked with :func:`check_probe` when `model` is given.

    Parameters
    ----------
    source : path-like
        The probe data.
    model : ExternalModel, optional
        The model the probe is for.
    limit : int, optional
        At most this many inputs (images, sentences, or the first rows of a
        tensor file).
    max_length : int, default 128
        Token limit for sentences.
    max_bytes : int or None, default 2 GiB
        Memory limit of a tensor file's arrays or of a folder's image batch
        (checked before the data are read).

    Returns
    -------
    torch.Tensor, tuple, dict or BatchEncoding
        Ready for ``otviz.capture(model.model, probe, layers)``.
    """
    p = _as_path(source, "probe path")
    spec = model.input_spec if model is not None else None
    if p.is_dir():
        size = spec.image_size if spec is not None else None
        channels = spec.channels if spec is not None else None
        if spec is not None and spec.kind == "tokens":
            raise ValueError(f"{p} is a folder of images, but the model takes token ids; pass a .txt file "
                             "of sentences or a tensor file of token ids")
        try:
            probe: Probe = load_image_folder(p, size=size, channels=channels, limit=limit, max_bytes=max_bytes)
        except ValueError as exc:
            if "different sizes" in str(exc) and size is None:
                raise ValueError(f"{exc}; the model does not state its input size, so resize the images "
                                 "yourself or pass size=") from None
            raise
    elif p.suffix.lower() == ".txt":
        probe = tokenize_sentences(p, model.tokenizer if model is not None else None,
                                   max_length=max_length, limit=limit)
    else:
        probe = load_tensor_file(p, max_bytes=max_bytes)
        if limit is not None:
            probe = _head(probe, int(limit))
    if model is not None:
        check_probe(model, probe)
    return probe


def _head(probe: Probe, n: int) -> Probe:
    if isinstance(probe, torch.Tensor):
        return probe[:n]
    if isinstance(probe, tuple):
        return tuple(t[:n] for t in probe)
    return type(probe)({k: v[:n] for k, v in probe.items()}) if isinstance(probe, dict) else \
        {k: v[:n] for k, v in probe.items()}


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


def check_probe(model: ExternalModel, inputs: Probe) -> None:
    """Check a probe against what the model declares; raise ValueError naming the fix.

    Checks, where the model states them (:attr:`ExternalModel.input_spec`):

    - token models: integer ``input_ids`` (a tensor, or a mapping with that
      key), ids in ``[0, vocab_size)``, at most ``max_length`` tokens, an
      ``attention_mask`` of the same shape;
    - image models: a floating ``(N, C, H, W)`` tensor with the stated
      channels and size;
    - exported programs: the number of positional inputs, each one's dtype
      and every static dimension (a static batch axis included);
    - flattening models (otviz MLP): the values per input.

    Parameters
    ----------
    model : ExternalModel
        The model.
    inputs : torch.Tensor, tuple, dict or BatchEncoding
        The probe.

    Raises
    ------
    ValueError
        What does not match, what was expected, and what to pass instead.
    """
    spec = model.input_spec
    if spec is None:
        return
    if isinstance(inputs, Mapping) or (hasattr(inputs, "keys") and hasattr(inputs, "__getitem__")
                                       and not isinstance(inputs, torch.Tensor)):
        named = {k: inputs[k] for k in inputs.keys()}
    else:
        named = None
    if spec.kind == "tokens":
        ids = named.get("input_ids") if named is not None else (inputs if isinstance(inputs, torch.Tensor) else None)
        if ids is None:
            raise ValueError(
                "the model takes token ids: pass a tensor of ids, a mapping with 'input_ids' (and "
                "'attention_mask'), or a .txt file of sentences to tokenise"
                + (f"; got keys {sorted(named)}" if named is not None else f"; got a {type(inputs).__name__}"))
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor of token ids, got "
                             f"{_shape(ids) if isinstance(ids, torch.Tensor) else type(ids).__name__}; "
                             "tokenise the text with the model's tokenizer")
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (N, L) (sentences x tokens), got {tuple(ids.shape)}")
        if spec.vocab_size and ids.numel() and (int(ids.max()) >= spec.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"token ids range over [{int(ids.min())}, {int(ids.max())}] but the model's vocabulary "
                             f"has {spec.vocab_size} entries (ids 0..{spec.vocab_size - 1}); tokenise with this "
                             "model's own tokenizer")
        if spec.max_length and ids.shape[1] > spec.max_length:
            raise ValueError(f"the probe has {ids.shape[1]} tokens per sentence, more than the model's "
                             f"{spec.max_length} positions; truncate (max_length={spec.max_length})")
        mask = named.get("attention_mask") if named is not None else None
        if mask is not None and tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(ids.shape)}; "
                             "they must match (one 0/1 per token)")
        return
    if spec.shapes:  # an exported program: exact signature
        args = inputs if isinstance(inputs, tuple) else ((inputs,) if isinstance(inputs, torch.Tensor) else None)
        if args is None:
            raise ValueError(f"the program takes {len(spec.shapes)} positional tensor(s) ({spec.describe()}); "
                             f"got a {type(inputs).__name__} of {sorted(named) if named else '?'}: pass a tensor "
                             "or a list of tensors")
        if len(args) != len(spec.shapes):
            raise ValueError(f"the program takes {len(spec.shapes)} positional input(s) ({spec.describe()}), "
                             f"the probe has {len(args)}")
        for i, (t, shape, dtype) in enumerate(zip(args, spec.shapes, spec.dtypes)):
            name = spec.names[i] if i < len(spec.names) else str(i)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"input {name!r} must be a tensor, got {type(t).__name__}")
            if dtype is not None and t.dtype != dtype:
                raise ValueError(f"input {name!r} is {_shape(t)} but the program was exported for "
                                 f"{str(dtype).replace('torch.', '')}; convert the probe "
                                 f"(e.g. x.to(torch.{str(dtype).replace('torch.', '')}))")
            if len(shape) != t.ndim:
                raise ValueError(f"input {name!r} has shape {tuple(t.shape)}, the program expects {spec.describe()}")
            for axis, (want, got) in enumerate(zip(shape, t.shape)):
                if want is not None and want != got:
                    if axis == 0:
                        raise ValueError(
                            f"the program was exported with a fixed batch of {want} inputs and the probe has "
                            f"{got}: probe with exactly {want} inputs, or re-export with a dynamic batch axis "
                            "(torch.export.export(model, args, dynamic_shapes=({0: torch.export.Dim('batch')},)))")
                    raise ValueError(f"input {name!r} has shape {tuple(t.shape)}, the program expects "
                                     f"{spec.describe()} (axis {axis}: {want}, not {got})")
        return
    x = inputs if isinstance(inputs, torch.Tensor) else None
    if x is None:
        raise ValueError(f"the model takes one tensor ({spec.describe()}), got a {type(inputs).__name__}")
    if spec.kind == "images":
        if not x.dtype.is_floating_point:
            raise ValueError(f"the model takes float images, the probe is {_shape(x)}; convert it (x.float() / 255 "
                             "for 8-bit pixels)")
        if x.ndim != 4:
            raise ValueError(f"the model takes images (N, C, H, W), the probe has shape {tuple(x.shape)}")
        if spec.channels and x.shape[1] != spec.channels:
            raise ValueError(f"the model takes {spec.channels}-channel images, the probe has {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)})")
        if spec.image_size and tuple(x.shape[-2:]) != tuple(spec.image_size):
            raise ValueError(f"the model takes {spec.image_size[0]}x{spec.image_size[1]} images, the probe's are "
                             f"{x.shape[-2]}x{x.shape[-1]}; resize them")
    elif spec.features:
        if not x.dtype.is_floating_point:
            raise ValueError(f"the model takes float inputs, the probe is {_shape(x)}")
        n = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        if n != spec.features:
            raise ValueError(f"the model takes inputs of {spec.features} values (after flattening), the probe's "
                             f"have {n} (shape {tuple(x.shape)})")
