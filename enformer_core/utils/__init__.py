"""Small helpers of the launchers and tools."""
import json
import os


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` (creating its folder) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)
    print(f'wrote {path}')
