"""``python -m helpers <command> ...``: one entry point for the harness's command lines.

    python -m helpers notebook run|publish|validate|table|readme ...   (helpers.harness.notebook)
    python -m helpers sweep run|aggregate ...                          (helpers.harness.sweep)
    python -m helpers data list|fetch ...                              (helpers.harness.data)
    python -m helpers course [--out DIR]                               (helpers.harness.course)
    python -m helpers site [--out DIR]                                 (helpers.harness.site)
    python -m helpers entry --repo OWNER/NAME [--branch main]          (helpers.harness.entry)
    python -m helpers llm record|seed ...                              (helpers.harness.llm_record)
    python -m helpers score --skill S.json --item README --responses CSV (helpers.studies.scoring.cli)
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"notebook": "helpers.harness.notebook", "sweep": "helpers.harness.sweep", "data": "helpers.harness.data",
            "course": "helpers.harness.course", "site": "helpers.harness.site", "entry": "helpers.harness.entry",
            "llm": "helpers.harness.llm_record", "score": "helpers.studies.scoring.cli"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
