"""``python -m diffalign`` and ``accelerate launch -m diffalign``."""

from diffalign.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
