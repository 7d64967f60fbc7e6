"""Copies the npm-installed dashboard assets into frontend/static/vendor (no CDN at run time)."""

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "node_modules"
VENDOR = HERE / "static" / "vendor"

ASSETS = {
    "@picocss/pico/css/pico.min.css": "pico.min.css",
    "htmx.org/dist/htmx.min.js": "htmx.min.js",
    "chart.js/dist/chart.umd.min.js": "chart.umd.min.js",
}


def main() -> None:
    VENDOR.mkdir(parents=True, exist_ok=True)
    for source, target in ASSETS.items():
        shutil.copyfile(MODULES / source, VENDOR / target)


if __name__ == "__main__":
    main()
