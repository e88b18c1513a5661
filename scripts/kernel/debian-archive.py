#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Print the archive URI this machine's apt uses for one suite (e.g. bookworm-security).

The kernel bench downloads arm64 packages through a private apt configuration;
it must use the same archive the host already trusts, and no host name may be
written into the project's files, so the URI is read from /etc/apt at run time
(one-line `.list` files and deb822 `.sources` files).
"""
from __future__ import annotations

import glob
import re
import sys
from collections.abc import Iterator


def _one_line_sources() -> Iterator[tuple[str, list[str]]]:
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            text = open(path, encoding="utf-8").read()
        except OSError:
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]]


def _deb822_sources() -> Iterator[tuple[str, list[str]]]:
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in open(path, encoding="utf-8").read().split("\n\n"):
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip()] = value.split()
            if "deb" in fields.get("Types", []):
                for uri in fields.get("URIs", []):
                    yield uri, fields.get("Suites", [])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: debian-archive.py SUITE", file=sys.stderr)
        return 2
    for uri, suites in [*_one_line_sources(), *_deb822_sources()]:
        if argv[1] in suites:
            print(uri)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
