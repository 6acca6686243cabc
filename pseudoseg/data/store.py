"""Fixed-shape record files on disk: the image cache and the pseudo-label store.

A store is a standard ``.npy`` file of shape ``[N, *record_shape]`` (readable
with ``numpy.load``). Records are read with positioned reads rather than a
memory map, so reading or writing any number of records keeps the process's
resident memory at one batch: relabelling 10 000 images costs no more memory
than relabelling 1 000.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pseudoseg.errors import UserError


class ArrayStore:
    """Random-access reader/writer of the records of one ``.npy`` file."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self._fd = -1  # so that close() works on a store whose opening failed
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                self._offset = handle.tell()
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.path}: not a readable array store ({exc.__class__.__name__})") from None
        if fortran:
            raise UserError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.record_shape = self.shape[1:]
        self._record_bytes = int(np.prod(self.record_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: Path, count: int, record_shape: Sequence[int], dtype: np.dtype | str = np.uint8) -> ArrayStore:
        """A new zero-filled store (sparse on disk until written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (count, *record_shape)}
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            data_bytes = count * int(np.prod(record_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            handle.truncate(handle.tell() + data_bytes)
        return cls(path, writable=True)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable (e.g. for another process): reopen by path
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Records at ``indices`` (any order, repeats allowed), as a new array."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.record_shape), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        for row, index in enumerate(indices):
            if not 0 <= index < len(self):
                raise IndexError(f"record {index} out of range for {self.path} ({len(self)} records)")
            got = os.preadv(self._fd, [flat[row]], self._offset + int(index) * self._record_bytes)
            if got != self._record_bytes:
                raise UserError(f"{self.path}: file is truncated (record {index})")
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Contiguous records ``start:stop`` in one read."""
        count = stop - start
        out = np.empty((count, *self.record_shape), dtype=self.dtype)
        got = os.preadv(self._fd, [out.reshape(-1).view(np.uint8)], self._offset + start * self._record_bytes)
        if got != count * self._record_bytes:
            raise UserError(f"{self.path}: file is truncated (records {start}:{stop})")
        return out

    def write(self, start: int, records: np.ndarray) -> None:
        """Write contiguous records from ``start``."""
        records = np.ascontiguousarray(records, dtype=self.dtype)
        if records.shape[1:] != self.record_shape:
            raise ValueError(f"record shape {records.shape[1:]} does not match store {self.record_shape}")
        os.pwritev(self._fd, [records.reshape(-1).view(np.uint8)], self._offset + start * self._record_bytes)

    def write_at(self, indices: Sequence[int] | np.ndarray, records: np.ndarray) -> None:
        """Write records at arbitrary ``indices``."""
        records = np.ascontiguousarray(records, dtype=self.dtype)
        for index, record in zip(np.asarray(indices, dtype=np.int64), records):
            os.pwritev(self._fd, [record.reshape(-1).view(np.uint8)], self._offset + int(index) * self._record_bytes)

    def flush(self) -> None:
        os.fsync(self._fd)
