#!/usr/bin/env python3
"""kwarm benchmark driver, run by hack/bench.sh (which builds and pushes what it needs first).

    python3 bench/driver.py SECTION     SECTION: holder image warmup reaction footprint gate refresh

Each section measures, prints progress on stderr and writes bench/sections/SECTION.md (the
Markdown that hack/bench.sh merges into bench/RESULTS.md) and SECTION.json (raw numbers).
Everything it creates in the cluster is its own: namespaces kwarm-bench-*, fake nodes
bench-node-*; it removes them at the end of a section (also on failure).
Settings come from the environment (see hack/bench.sh for the list and defaults).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from section_footprint import section_footprint  # noqa: E402
from section_gate import section_gate  # noqa: E402
from section_holder import section_holder  # noqa: E402
from section_image import section_image  # noqa: E402
from section_reaction import section_reaction  # noqa: E402
from section_refresh import section_refresh  # noqa: E402
from section_warmup import section_warmup  # noqa: E402


def main():
    # SIGTERM (make interrupted, a stopped session) ends the section through its finally blocks,
    # which remove what it created in the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fn = {"holder": section_holder, "image": section_image, "warmup": section_warmup,
          "reaction": section_reaction, "footprint": section_footprint,
          "gate": section_gate, "refresh": section_refresh}.get(sys.argv[1])
    if not fn:
        sys.exit(f"unknown section {sys.argv[1]!r}\n{__doc__}")
    fn()


if __name__ == "__main__":
    main()
