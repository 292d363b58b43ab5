"""The reader study's secret: the seed of the order in which the images are shown.

Blinding needs an order nobody can rebuild from what they know (the ``--seed``, the stores,
their sizes). So each study draws 256 bits from :mod:`secrets` when it is first opened and
keeps them in ``order.key`` in the study folder, mode 0600, never printed, logged, served or
copied into plan.json; a resumed study reads them back.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from synthmri.io import atomic_write_bytes

log = logging.getLogger(__name__)

ORDER_KEY = "order.key"
ORDER_KEY_BITS = 256


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # not supported on this file system
        pass
    finally:
        os.close(fd)


def _write_order_key(path: Path, key: int) -> None:
    """Write `key` to `path` atomically with mode 0600; no other user can read it at any moment.

    It is written (:func:`synthmri.io.atomic_write_bytes`) into a private 0700 folder beside
    `path`, narrowed to 0600 there, then renamed onto `path`.
    """
    private = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = private / path.name
        atomic_write_bytes(staged, f"{key:0{ORDER_KEY_BITS // 4}x}\n".encode())
        os.chmod(staged, 0o600)
        os.replace(staged, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    _fsync_directory(path.parent)


def order_key(out: Path) -> int:
    """The secret seed of the study's presentation order, from ``out/order.key``; made there if missing.

    A new key is 256 bits from :mod:`secrets`. The key is never printed, logged or served;
    errors name the file, never its content.

    Raises:
        ValueError: the file is not a key (64 hex digits).
    """
    path = Path(out) / ORDER_KEY
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.randbits(ORDER_KEY_BITS)
        _write_order_key(path, key)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by other users (mode %03o); narrowed to 600", path, mode)
        os.chmod(path, 0o600)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not re.fullmatch(rf"[0-9a-f]{{{ORDER_KEY_BITS // 4}}}", text):
        raise ValueError(f"{path} is not a reader-study order key ({ORDER_KEY_BITS // 4} hex digits); "
                         "use another --out")
    return int(text, 16)
