"""Board descriptions: boards/<BOARD>/board.json -> what the factory tools need.

    python tools/factory/boards.py BOARD FIELD [--partition default|ota]

prints one field (the Makefile reads its offsets this way):
chip, firmware_offset, flash_size, nvs_offset, nvs_size, partition_csv.
Offsets and sizes print as hex ("0x9000"); an unknown board or field exits 2.

In Python: load("ESP32_GENERIC", partition="ota") -> dict with those fields
(offsets and sizes as ints, firmware_offset None for the simulated board)
plus "board", "partition" and "table" (the partition table rows).
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOARDS_DIR = REPO / "boards"
PARTITIONS = ("default", "ota")
FIELDS = ("chip", "firmware_offset", "flash_size", "nvs_offset", "nvs_size", "partition_csv")


class BoardError(Exception):
    """An unknown board or partition layout, or a malformed board.json (message is safe to print)."""


def names():
    """Boards that have a board.json."""
    return sorted(p.parent.name for p in BOARDS_DIR.glob("*/board.json"))


def _int(value, what):
    if value is None:
        return None
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise BoardError("%s: %r is not a number" % (what, value)) from None


def load(name, partition=None):
    """The board's facts for one partition layout ("default" or "ota"; None = "default")."""
    partition = partition or "default"
    path = BOARDS_DIR / str(name) / "board.json"
    if not name or not path.is_file():
        raise BoardError("unknown board %r (known: %s)" % (name, ", ".join(names())))
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise BoardError("%s: %s" % (path, exc)) from None
    layouts = doc.get("partitions", {})
    if partition not in layouts:
        raise BoardError("board %s has no partition layout %r (has: %s)" % (name, partition, ", ".join(layouts)))
    layout = layouts[partition]
    nvs = [row for row in layout["table"] if row[0] == "nvs"]
    if len(nvs) != 1:
        raise BoardError("%s: partition layout %r needs exactly one nvs row" % (path, partition))
    return {
        "board": doc.get("board", name),
        "chip": doc["chip"],
        "firmware_offset": _int(doc.get("firmware_offset"), "firmware_offset"),
        "flash_size": doc.get("flash_size"),
        "partition": partition,
        "partition_csv": layout.get("csv"),
        "table": layout["table"],
        "nvs_offset": _int(nvs[0][3], "nvs offset"),
        "nvs_size": _int(nvs[0][4], "nvs size"),
    }


def field(board, name):
    """One field as the Makefile wants it: hex for offsets and sizes, "" for none."""
    if name not in FIELDS:
        raise BoardError("unknown field %r (fields: %s)" % (name, ", ".join(FIELDS)))
    value = board[name]
    if value is None:
        return ""
    if isinstance(value, int):
        return hex(value)
    return str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print one fact of a board description (boards/<BOARD>/board.json).")
    parser.add_argument("board", help="board name: " + ", ".join(names()))
    parser.add_argument("field", choices=FIELDS)
    parser.add_argument("--partition", choices=PARTITIONS, default="default", help="partition layout (default: default)")
    args = parser.parse_args(argv)
    try:
        print(field(load(args.board, args.partition), args.field))
    except BoardError as exc:
        print("boards.py: error: %s" % exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
