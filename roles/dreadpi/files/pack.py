"""Pack the dreadpi package into a byte-for-byte reproducible tar, on the controller.

One file to compare and copy instead of one remote round trip per module, which costs a Pi Zero seconds each.
Reproducible (sorted entries, mtime 0, root-owned, fixed modes, no bytecode), so the same source always gives
the same archive and re-deploying it changes nothing. Prints "written" or "unchanged" for changed_when.
Usage: python3 pack.py SOURCE_PACKAGE_DIR OUTPUT.tar
"""

from __future__ import annotations

import io
import os
import sys
import tarfile


def entries(source: str) -> list:
    found = []
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        relative = os.path.relpath(directory, os.path.dirname(source))
        found.append((relative, None))
        found.extend((os.path.join(relative, name), os.path.join(directory, name))
                     for name in sorted(files) if name.endswith(".py"))
    return found


def pack(source: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, path in entries(source):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main(source: str, output: str) -> int:
    data = pack(os.path.abspath(source))
    try:
        with open(output, "rb") as handle:
            if handle.read() == data:
                print("unchanged")
                return 0
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, output)
    print("written")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
