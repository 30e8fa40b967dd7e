"""Read blocks of a tiled TIFF page by decoding its tiles straight from the file.

tifffile's zarr store reads any TIFF, but every 240-512 px tile then passes through zarr's chunk
machinery; on a JPEG-compressed slide that ran at a quarter of the codec's speed. For the common case
(tiles of interleaved 8-bit samples, one plane) a dask block here reads the byte ranges of the tiles
it covers with ``os.pread`` and decodes them with the page's own tifffile decoder. Uncompressed
levels stored contiguously are read through a memory map (:class:`MappedLevel`).
"""

from __future__ import annotations

import math
import os
import weakref

import numpy as np


class TileReader:
    """Decode any ``(y0:y1, x0:x1)`` region of one level of a tiled TIFF.

    Parameters
    ----------
    path
        The TIFF file.
    series, level
        The level ``tifffile.TiffFile(path).series[series].levels[level]``; it must pass
        :meth:`supports`.
    page
        That level's keyframe, when the caller has the file open already (saves parsing it again).

    The reader keeps its own file descriptor (closed when the reader is collected), is safe to call
    from several threads, and pickles by its location, so that process-based schedulers reopen the
    file.
    """

    def __init__(self, path, series: int = 0, level: int = 0, page=None):
        self.path, self.series, self.level = str(path), int(series), int(level)
        if page is None:  # located again, e.g. after unpickling in another process
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                self._read_page(tif.series[self.series].levels[self.level].keyframe)
        else:
            self._read_page(page)
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def _read_page(self, page) -> None:
        self.shape = (int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel))
        self.tile = (int(page.tilelength), int(page.tilewidth))
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.jpeg = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
        self.decode = page.decode  # a closure over the page's codec settings; needs no open file
        self.tiles_across = math.ceil(self.shape[1] / self.tile[1])

    def __getstate__(self) -> dict:
        return {"path": self.path, "series": self.series, "level": self.level}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @staticmethod
    def supports(page) -> bool:
        """Whether ``page`` is read here: tiled, 2-D, one plane of interleaved uint8 RGB(A) or grey.

        NDPI pages (tifffile presents their JPEG restart intervals as tiles) are left to tifffile.
        """
        if not page.is_tiled or page.is_ndpi:
            return False
        tiles = math.ceil(page.imagelength / page.tilelength) * math.ceil(page.imagewidth / page.tilewidth)
        return bool(
            page.tiledepth == 1
            and page.imagedepth == 1
            and (page.samplesperpixel == 1 or page.planarconfig == 1)
            and page.dtype == np.uint8
            and len(page.dataoffsets) == tiles
        )

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The ``(y1 - y0, x1 - x0, samples)`` pixels of the region; missing tiles read as 0, as in tifffile."""
        (height, width, samples), (th, tw) = self.shape, self.tile
        out = np.zeros((y1 - y0, x1 - x0, samples), dtype=np.uint8)
        for ty in range(y0 // th, math.ceil(y1 / th)):
            for tx in range(x0 // tw, math.ceil(x1 / tw)):
                index = ty * self.tiles_across + tx
                count = int(self.counts[index])
                data = os.pread(self.fd, count, int(self.offsets[index])) if count else None
                tile = self.decode(data, index, **self.jpeg)[0]
                if tile is None:
                    continue
                ty0, tx0 = ty * th, tx * tw
                # edge tiles are stored whole by most writers, cropped to the image by some
                full, cropped = (th, tw, samples), (min(th, height - ty0), min(tw, width - tx0), samples)
                if tile.size not in (math.prod(full), math.prod(cropped)):
                    raise ValueError(
                        f"{self.path}: tile {index} holds {tile.size} values, not a {th} x {tw} tile."
                    )
                tile = tile.reshape(full if tile.size == math.prod(full) else cropped)
                ya, yb = max(y0, ty0), min(y1, ty0 + tile.shape[0])
                xa, xb = max(x0, tx0), min(x1, tx0 + tile.shape[1])
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[ya - ty0 : yb - ty0, xa - tx0 : xb - tx0]
        return out

    def to_dask(self, target: int):
        """A lazy ``(y, x, samples)`` array with blocks of whole tiles, about ``target`` px a side."""
        import dask.array as da

        def block(block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            return self.read(y0, y1, x0, x1)

        chunks = [_split(n, whole_tiles(target, t)) for n, t in zip(self.shape[:2], self.tile, strict=True)]
        return da.map_blocks(block, chunks=(*chunks, (self.shape[2],)), dtype=np.uint8)


def whole_tiles(target: int, tile: int) -> int:
    """The multiple of ``tile`` nearest ``target`` (at least one tile): a block side that cuts no tile."""
    return max(1, round(target / tile)) * tile


def _split(n: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, n - start) for start in range(0, n, step))


class MappedLevel:
    """Read any region of an uncompressed TIFF level stored contiguously, through a memory map.

    tifffile's zarr store reads such a level strip by strip, and a writer that puts the whole image
    in one strip (tifffile's default when uncompressed) makes every block read all of it; a memory
    map reads only the bytes of the region.

    Parameters
    ----------
    path
        The TIFF file.
    offset, shape, dtype
        Where the level's samples start, their shape (tifffile's, e.g. ``(y, x, samples)``) and
        their dtype in the file's byte order.

    Regions are returned as copies in native byte order. The map is opened when first read (after
    unpickling too: the reader pickles by its location, not its pixels).
    """

    def __init__(self, path, offset: int, shape: tuple[int, ...], dtype):
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._map = None

    @classmethod
    def of(cls, path, byteorder: str, level) -> MappedLevel:
        """The reader of ``level``, a series level (passing :meth:`supports`) of an open ``tifffile.TiffFile``."""
        return cls(path, level.dataoffset, level.shape, np.dtype(level.dtype).newbyteorder(byteorder))

    @staticmethod
    def supports(level) -> bool:
        """Whether a ``tifffile`` series level is one uncompressed page of contiguous samples."""
        return bool(len(level.pages) == 1 and level.keyframe.is_memmappable and level.dataoffset is not None)

    def __getstate__(self) -> dict:
        return {"path": self.path, "offset": self.offset, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def read(self, key) -> np.ndarray:
        """``level[key]`` for a tuple of slices, read from the file."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        return np.array(self._map[key], dtype=self.dtype.newbyteorder("="))

    def to_dask(self, target: int, axes: str):
        """A lazy array of the level, with blocks of about ``target`` px a side along ``axes`` Y and X."""
        import dask.array as da

        def block(block_info=None):
            return self.read(tuple(slice(a, b) for a, b in block_info[None]["array-location"]))

        chunks = [_split(n, target) if ax in "YX" else (n,) for ax, n in zip(axes, self.shape, strict=True)]
        return da.map_blocks(block, chunks=chunks, dtype=self.dtype.newbyteorder("="))
