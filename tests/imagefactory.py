"""Builders of small image folders for tests (data tests now, end-to-end CLI tests later)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16  # the image_size the pixel expectations below are written for

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _halves(w: int, h: int, first: tuple, second: tuple, vertical: bool = True) -> Image.Image:
    """Left/right (vertical=True) or top/bottom halves of two colours."""
    im = Image.new("RGB", (w, h), first)
    im.paste(second, (w // 2, 0, w, h) if vertical else (0, h // 2, w, h))
    return im


def _noise_bytes(path: Path, fmt: str) -> bytes:
    rng = np.random.default_rng(0)  # noise, so that half of the file is far from a whole image
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path, fmt)
    return path.read_bytes()


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def make_bad_image_folder(root: Path) -> dict:
    """Every awkward kind of file in one (unlabelled) folder.

    Returns {"good": [ids], "bad": {id: word expected in its skip reason}, "ignored": [names]};
    ids are posix paths relative to root. Loaded with image_size=SIZE, the good images read:
      rgb.jpg             a colour gradient
      cmyk.jpg            CMYK red -> RGB red
      gray16.png          16-bit gray: rows 0-5 65535 -> 255, rows 6-11 32896 -> 128, rows 12-15 1000 -> 4
      palette.png         palette: top half green, bottom half a transparent index -> white
      rgba.png            top half fully transparent -> white, bottom half opaque blue
      gray.png            8-bit gray, all 100
      exif_rotated.jpg    stored 32x16 red|blue, EXIF orientation 6 -> upright: top red, bottom blue
      large.jpg           6000x4000 green|red|blue|green -> centre crop: left red, right blue
      upper.BMP           green (upper-case suffix)
      nested/deep/bilevel.png   1-bit: top half white, bottom half black
    """
    root = Path(root)
    (root / "nested" / "deep").mkdir(parents=True, exist_ok=True)

    gradient = np.zeros((20, 30, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 30, dtype=np.uint8)
    gradient[..., 1] = np.linspace(0, 255, 20, dtype=np.uint8)[:, None]
    Image.fromarray(gradient).save(root / "rgb.jpg", quality=95)
    Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)

    deep = np.full((SIZE, SIZE), 65535, np.uint16)
    deep[6:12], deep[12:] = 32896, 1000
    Image.fromarray(deep).save(root / "gray16.png")  # mode I;16

    palette = Image.new("P", (SIZE, SIZE), 0)
    palette.putpalette([0, 255, 0, 0, 0, 0])  # index 0 green, index 1 black but transparent
    palette.paste(1, (0, SIZE // 2, SIZE, SIZE))
    palette.save(root / "palette.png", transparency=1)

    rgba = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, SIZE // 2, SIZE, SIZE))
    rgba.save(root / "rgba.png")

    Image.new("L", (SIZE, SIZE), 100).save(root / "gray.png")

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _halves(2 * SIZE, SIZE, RED, BLUE).save(root / "exif_rotated.jpg", quality=95, exif=exif)

    large = _halves(6000, 4000, RED, BLUE)
    large.paste(GREEN, (0, 0, 900, 4000))  # green strips outside the centre square: cropped away
    large.paste(GREEN, (5100, 0, 6000, 4000))
    large.save(root / "large.jpg", quality=90)
    Image.new("RGB", (SIZE, SIZE), GREEN).save(root / "upper.BMP")

    bilevel = Image.new("1", (SIZE, SIZE), 1)
    bilevel.paste(0, (0, SIZE // 2, SIZE, SIZE))
    bilevel.save(root / "nested" / "deep" / "bilevel.png")

    (root / "empty.jpg").write_bytes(b"")
    data = _noise_bytes(root / "truncated.jpg", "JPEG")
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    data = _noise_bytes(root / "truncated.png", "PNG")
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image\n")
    png_header_only(root / "huge.png", 20000, 20000)  # 400M pixels

    (root / "notes.txt").write_text("not an image, ignored\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "._rgb.jpg").write_bytes(b"\0\5\26\7 AppleDouble junk")  # hidden: ignored

    return {
        "good": [
            "cmyk.jpg", "exif_rotated.jpg", "gray.png", "gray16.png", "large.jpg",
            "nested/deep/bilevel.png", "palette.png", "rgb.jpg", "rgba.png", "upper.BMP",
        ],
        "bad": {
            "empty.jpg": "empty", "truncated.jpg": "truncated", "truncated.png": "truncated",
            "text.png": "not an image", "huge.png": "too large",
        },
        "ignored": ["notes.txt", ".DS_Store", "._rgb.jpg"],
    }  # fmt: skip


def make_class_folder(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> dict[str, str]:
    """Class sub-folders of small random colour PNGs; returns {id: class name}."""
    rng = np.random.default_rng(seed)
    labels = {}
    for name, n in counts.items():
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(root) / name / f"{i:03d}.png")
            labels[f"{name}/{i:03d}.png"] = name
    return labels


def _distinct_image(rng: np.random.Generator, size: int) -> Image.Image:
    """A background and four random rectangles or ellipses of random colours."""
    from PIL import ImageDraw

    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        w, h = (int(v) for v in rng.integers(6, size // 2, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def make_duplicate_folder(root: Path, distinct: int = 40, size: int = 32, seed: int = 0) -> dict[str, str]:
    """``distinct`` different images img00.png ... plus planted copies of the first four: two exact
    copies (new names), one 5% brighter, one re-encoded as JPEG quality 90, one cropped by a pixel
    and resized back. Returns {copy file: the file it copies}."""
    from PIL import ImageEnhance

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [_distinct_image(rng, size) for _ in range(distinct)]
    for k, im in enumerate(images):
        im.save(root / f"img{k:02d}.png")
    images[0].save(root / "copy_exact_00.png")
    images[0].save(root / "copy_exact_00b.png")
    ImageEnhance.Brightness(images[1]).enhance(1.05).save(root / "copy_bright_01.png")
    images[2].save(root / "copy_jpeg_02.jpg", quality=90)
    images[3].crop((1, 1, size, size)).resize((size, size)).save(root / "copy_crop_03.png")
    return {"copy_exact_00.png": "img00.png", "copy_exact_00b.png": "img00.png", "copy_bright_01.png": "img01.png",
            "copy_jpeg_02.jpg": "img02.png", "copy_crop_03.png": "img03.png"}
