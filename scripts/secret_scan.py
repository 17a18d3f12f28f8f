"""Fail when a tracked file holds a secret-looking string that is not allowed by name.

Runs ``detect-secrets scan`` (Yelp's scanner: keywords, basic-auth URLs, high-entropy
strings, private keys, cloud tokens) over the files git tracks, and compares what it finds
with ``.secrets-allowed.json``: each allowed finding names its file, its type, the
scanner's hash of the string (never the string) and why it is there. Line numbers are not
compared, so an edit elsewhere in a file does not fail the scan; a new finding, or a known
one in another file, does. ``scripts/test`` runs it before the linters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = ROOT / ".secrets-allowed.json"


def main() -> int:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    files = [name for name in files if name != ALLOWED.name]  # its hashes look like secrets
    scanner = Path(sys.executable).parent / "detect-secrets"
    found = json.loads(
        subprocess.run(
            [str(scanner), "scan", *files], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )["results"]
    allowed = {
        (entry["file"], entry["type"], entry["hashed_secret"])
        for entry in json.loads(ALLOWED.read_text())["allowed"]
    }
    new = [
        (name, item["line_number"], item["type"])
        for name, items in sorted(found.items())
        for item in items
        if (name, item["type"], item["hashed_secret"]) not in allowed
    ]
    for name, line, kind in new:
        print(f"{name}:{line}: {kind} (not in .secrets-allowed.json)", file=sys.stderr)
    if new:
        print(
            f"{len(new)} secret-looking string(s): remove them, or allow each in "
            ".secrets-allowed.json with the reason it is safe",
            file=sys.stderr,
        )
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
