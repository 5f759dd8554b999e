#!/usr/bin/env python3
"""Prints the Debian mirrors apt already uses on this machine, for debootstrap.

    debian-mirrors.py SUITE        e.g. bookworm

Two lines: the archive mirror (serving SUITE) and the security mirror (serving
SUITE-security), read from /etc/apt/sources.list and /etc/apt/sources.list.d/*.list
(one-line format) and *.sources (deb822). Falls back to deb.debian.org for either.
"""

import glob
import sys

suite = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
entries = []  # (uri, suites)


def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = [w for w in words[1:] if not w.startswith("[")]  # drop [arch=... signed-by=...]
        if len(words) >= 2:
            entries.append((words[0], [words[1]]))


def deb822(path):
    stanza = {}
    for line in list(open(path, encoding="utf-8", errors="replace")) + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if "deb" in stanza.get("types", "").split() and stanza.get("enabled", "yes") != "no":
                for uri in stanza.get("uris", "").split():
                    entries.append((uri, stanza.get("suites", "").split()))
            stanza = {}
        elif ":" in line and not line[0].isspace():
            k, v = line.split(":", 1)
            stanza[k.strip().lower()] = v.strip()


for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        one_line(path)
    except OSError:
        pass
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    deb822(path)


def first(want, default):
    for uri, suites in entries:
        if want in suites and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return default


print(first(suite, "http://deb.debian.org/debian"))
print(first(f"{suite}-security", "http://deb.debian.org/debian-security"))
