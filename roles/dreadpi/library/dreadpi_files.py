#!/usr/bin/python3
"""Ansible module: the role's root-owned files and directories, compared, validated and written in one run."""

from __future__ import annotations

import os
import shlex
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dreadpi_files
short_description: Write dreadpi's files in one module run, each validated before it replaces the old one
description:
  - Every file a routine run checks (config, cron, units, collectors, CA) costs one module run here instead of two
    per file (the template and copy actions stat, then run the file module). On a Pi Zero each module run is about
    a second of CPU.
  - Files are root-owned. A file whose content, mode or owner differs is written to a temporary file beside it,
    checked with its validate command, then renamed over the old one, so a refused or interrupted write leaves the
    old file. Files are handled in order; the first refusal stops the rest.
  - Check mode reports what would change and writes nothing (validation needs the new program, so it is not run).
options:
  directories:
    description: Directories to create (root-owned, with this mode) before the files.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      mode: {description: Octal mode as a string., type: str, required: true}
  files:
    description: The files, in the order they are written.
    type: list
    elements: dict
    default: []
    suboptions:
      dest: {description: Absolute path., type: path, required: true}
      content: {description: Content of a file that may be shown in a diff., type: str}
      secret_content: {description: Content that holds secrets; never returned, never diffed., type: str}
      mode: {description: Octal mode as a string., type: str, default: "0644"}
      validate: {description: Command checking the new file, C(%s) replaced by its temporary path., type: str}
      state: {description: C(absent) removes the file., type: str, choices: [present, absent], default: present}
author: dreadpi
"""

RETURN = r"""
changed_files:
  description: The paths that were (or in check mode would be) written or removed.
  type: list
  elements: str
  returned: always
"""



def _current(dest: str) -> tuple:
    """(content bytes or None, mode, uid, gid) of what is there now."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return None, None, None, None
    if not stat.S_ISREG(info.st_mode):
        return b"", None, None, None  # a directory or link where a file belongs: replace it
    with open(dest, "rb") as handle:
        return handle.read(), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def _ensure_directory(module: AnsibleModule, path: str, mode: int, changed: list) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        module.fail_json(msg=f"{path} should be a directory, but something else is there")
    if info is not None and stat.S_IMODE(info.st_mode) == mode and info.st_uid == 0 and info.st_gid == 0:
        return
    changed.append(path)
    if module.check_mode:
        return
    if info is None:
        os.makedirs(path, mode=0o755, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, mode)


def _write(module: AnsibleModule, dest: str, data: bytes, mode: int, validate: str | None) -> None:
    directory = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchown(handle.fileno(), 0, 0)
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if validate:
            argv = [tmp if word == "%s" else word.replace("%s", tmp) for word in shlex.split(validate)]
            rc, out, err = module.run_command(argv)
            if rc != 0:
                module.fail_json(msg=f"{dest} was not written: its check refused it (exit {rc}): "
                                     f"{(err or out).strip()}", rc=rc)
        os.replace(tmp, dest)
        tmp = ""
    finally:
        if tmp:
            os.unlink(tmp)


def _diff(dest: str, before: bytes | None, after: bytes) -> dict:
    def text(data: bytes | None) -> str:
        return "" if data is None else data.decode("utf-8", "replace")

    return {"before_header": dest, "after_header": dest, "before": text(before), "after": text(after)}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "path", "required": True},
                "mode": {"type": "str", "required": True},
            }},
            "files": {"type": "list", "elements": "dict", "default": [], "options": {
                "dest": {"type": "path", "required": True},
                "content": {"type": "str"},
                "secret_content": {"type": "str", "no_log": True},
                "mode": {"type": "str", "default": "0644"},
                "validate": {"type": "str"},
                "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            }},
        },
        supports_check_mode=True,
    )
    changed: list = []
    diffs: list = []
    for directory in module.params["directories"]:
        _ensure_directory(module, directory["path"], int(directory["mode"], 8), changed)
    for spec in module.params["files"]:
        dest = spec["dest"]
        if spec["state"] == "absent":
            if os.path.lexists(dest):
                changed.append(dest)
                if not module.check_mode:
                    os.unlink(dest)
            continue
        secret = spec["secret_content"] is not None
        if secret == (spec["content"] is not None):
            module.fail_json(msg=f"{dest}: give exactly one of content and secret_content")
        data = (spec["secret_content"] if secret else spec["content"]).encode()
        mode = int(spec["mode"], 8)
        before, old_mode, uid, gid = _current(dest)
        if before == data and old_mode == mode and uid == 0 and gid == 0:
            continue
        changed.append(dest)
        if module._diff and not secret and before != data:
            diffs.append(_diff(dest, before, data))
        if not module.check_mode:
            _write(module, dest, data, mode, spec["validate"])
    result = {"changed": bool(changed), "changed_files": changed}
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
