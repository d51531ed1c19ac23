"""Draw the demo's pictures into config/sample/media/: one flat illustration per sample article.

Invented like the rest of the sample content: a sky in bands, a sun, hills or a skyline, water,
in colours drawn from the article's name. Pure Python (a palette PNG written with zlib), so
nothing is downloaded and the output is the same on every machine. Run from the repository:

    .venv/bin/python config/sample/make_media.py

It draws every `…/media/<name>.png` the sample feeds reference.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 600, 338

# fmt: off
PALETTES = [  # sky top, sky bottom, sun, far land, near land, water
    ((27, 48, 94), (232, 146, 92), (255, 214, 120), (92, 64, 88), (48, 38, 60), (40, 70, 120)),
    ((120, 180, 220), (214, 236, 246), (255, 246, 200), (120, 160, 110), (70, 120, 80),
     (60, 130, 170)),
    ((246, 196, 140), (250, 234, 200), (226, 90, 60), (190, 140, 100), (140, 92, 66),
     (90, 140, 160)),
    ((60, 90, 110), (170, 196, 200), (236, 240, 236), (110, 130, 140), (70, 86, 96), (50, 80, 96)),
    ((164, 22, 26), (240, 170, 120), (255, 236, 190), (120, 60, 50), (70, 36, 36), (110, 60, 70)),
]
# fmt: on


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    r, g, b2 = (round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    return (r, g, b2)


def draw(name: str) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    sky_top, sky_bottom, sun, far, near, water = PALETTES[seed[0] % len(PALETTES)]
    bands = 8
    palette = [_mix(sky_top, sky_bottom, i / (bands - 1)) for i in range(bands)]
    palette += [sun, far, near, water, _mix(water, (255, 255, 255), 0.35)]
    SUN, FAR, NEAR, WATER, SHINE = range(bands, bands + 5)
    horizon = 190 + seed[1] % 50
    sun_x, sun_y, sun_r = 80 + seed[2] * 440 // 255, 60 + seed[3] % 70, 26 + seed[4] % 22
    city = seed[5] % 2 == 0
    blocks = [(i * 600 // 14, 30 + seed[6 + i % 20] % 90) for i in range(15)]
    rows = []
    for y in range(HEIGHT):
        row = bytearray()
        for x in range(WIDTH):
            if y < horizon:
                pixel = min(bands - 1, y * bands // horizon)
                if (x - sun_x) ** 2 + (y - sun_y) ** 2 <= sun_r**2:
                    pixel = SUN
                if city:
                    height = blocks[x * 14 // 600][1]
                    if y > horizon - height and (x * 14 // 600) % 3 != 1:
                        pixel = FAR
                else:
                    peak = abs(((x + seed[8] * 3) % 260) - 130) // 3
                    ridge = horizon - 40 - (seed[7] % 30) + peak
                    if y > ridge:
                        pixel = FAR
                    hill = horizon - 10 + abs(((x + seed[9] * 5) % 180) - 90) // 4
                    if y > hill:
                        pixel = NEAR
            else:
                pixel = WATER
                if (y - horizon) % 14 == 3 and (x + y * 3) % 90 < 40:
                    pixel = SHINE
            row.append(pixel)
        rows.append(b"\x00" + bytes(row))
    return _png(palette, b"".join(rows))


def _png(palette: list[tuple[int, int, int]], raw: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 3, 0, 0, 0)
    plte = b"".join(bytes(color) for color in palette)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", plte)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def main() -> None:
    out = HERE / "media"
    out.mkdir(exist_ok=True)
    names = set()
    for feed in sorted((HERE / "feeds").iterdir()):
        names.update(re.findall(r"/media/([a-z0-9-]+)\.png", feed.read_text(encoding="utf-8")))
    for name in sorted(names):
        (out / f"{name}.png").write_bytes(draw(name))
    print(f"{len(names)} pictures in {out}")


if __name__ == "__main__":
    main()
