"""`make bench`: every benchmark, each printing its method and `bench: NAME = VALUE UNIT`."""

from . import migration
from .startup import list_startup_ratio


def main() -> None:
    list_startup_ratio()
    migration.run()


if __name__ == "__main__":
    main()
