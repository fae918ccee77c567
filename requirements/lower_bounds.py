"""Print the runtime dependencies of pyproject.toml pinned at their declared lower bounds (``>=X`` -> ``==X``).

``make lock`` feeds this to the resolver as overrides, so that ``make test-oldest`` proves the ranges users
install from are honest.
"""

import re
import sys
import tomllib

#: Optional extras that are runtime code too (their lower bounds are tested the same way).
RUNTIME_EXTRAS = ("postgres",)

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
dependencies = project["dependencies"] + [d for extra in RUNTIME_EXTRAS for d in extras[extra]]
for dependency in dependencies:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)", dependency)
    if match is None:
        sys.exit(f"{dependency!r} has no lower bound (>=): every runtime dependency must declare one")
    print(f"{match.group(1)}=={match.group(3)}")
