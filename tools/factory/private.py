"""Files that hold secrets (NVS images and backups, batch copies): owner-only (0600) whatever the umask.

os.open's mode is filtered by the umask and ignored for a file that already exists (a stale
copy keeps its old mode), so every file is chmod-ed after it is opened, before data goes in.
"""
import os
from pathlib import Path

MODE = 0o600


def create(path):
    """An empty owner-only file at path, for another program to fill (esptool's read-flash opens it "wb",
    which keeps the mode)."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, MODE)
    os.close(fd)
    os.chmod(str(path), MODE)


def write(path, data):
    """Write bytes to an owner-only file atomically (a temporary file renamed over path)."""
    tmp = str(path) + ".tmp"
    create(tmp)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, str(path))


def copy(src, dst):
    """Copy a file holding secrets to an owner-only dst."""
    write(dst, Path(src).read_bytes())
