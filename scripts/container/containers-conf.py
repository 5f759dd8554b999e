#!/usr/bin/env python3
"""Sets keys in a containers.conf (TOML) without clobbering anything else.

    containers-conf.py FILE SECTION.KEY=VALUE ...

VALUE is written verbatim (give TOML: '"cgroupfs"', '[]'). A key already set to VALUE
in its section is left alone; one set to something else is replaced in place (the old
line kept as a comment); a missing key is added at the top of its section; a missing
section is appended. Comments and every other setting stay as they were. Prints what
changed; exits 0 either way.
"""

import os
import re
import sys
import tempfile

HEADER = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def key_line(key):
    return re.compile(r"^\s*" + re.escape(key) + r"\s*=")


def strip_comment(text):
    """The part before a `#` that is outside a string (containers.conf values are simple)."""
    out, quote = [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out).strip()


def depth(text):
    return text.count("[") - text.count("]")


def apply(lines, section, key, value):
    wanted = f"{key} = {value}"
    start = end = None
    for i, line in enumerate(lines):
        m = HEADER.match(line)
        if m and start is None and m.group(1) == section:
            start = i
        elif m and start is not None:
            end = i
            break
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", wanted]
        return f"added [{section}] {wanted}"
    end = len(lines) if end is None else end
    for i in range(start + 1, end):
        if key_line(key).match(lines[i]):
            # The value may span lines (a multi-line array): take lines until brackets balance.
            j, text = i, strip_comment(lines[i].split("=", 1)[1])
            while depth(text) > 0 and j + 1 < end:
                j += 1
                text += " " + strip_comment(lines[j])
            current = " ".join(text.split())
            if current.replace(" ", "").rstrip(",") == value.replace(" ", ""):
                return None
            old = [f"# {l.strip()}  (replaced by scripts/container-test)" if k == 0 else f"# {l.strip()}"
                   for k, l in enumerate(lines[i : j + 1])]
            lines[i : j + 1] = old + [wanted]
            return f"replaced [{section}] {key} ({current} -> {value})"
    lines.insert(start + 1, wanted)
    return f"added [{section}] {wanted}"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path = sys.argv[1]
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = ["# Written by scripts/container-test (podman with runc on cgroupfs)."]
    changes = []
    for arg in sys.argv[2:]:
        dotted, value = arg.split("=", 1)
        section, key = dotted.rsplit(".", 1)
        change = apply(lines, section, key, value)
        if change:
            changes.append(change)
    if not changes:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".containers.conf.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    for c in changes:
        print(f"{path}: {c}")


if __name__ == "__main__":
    main()
