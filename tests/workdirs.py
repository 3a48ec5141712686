"""What a workdir holds, to check that a failed or refused run changed nothing in it."""

import hashlib
import os


def files_of(workdir):
    """Every file under `workdir` with the sha256 of its bytes."""
    out = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out
