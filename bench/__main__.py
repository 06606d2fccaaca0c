"""`make bench`: every benchmark, each printing its method and `bench: NAME = VALUE UNIT`."""

from . import fleet, migration, switchshare
from .startup import list_startup_ratio


def main() -> None:
    list_startup_ratio()
    migration.run()
    fleet.run()
    switchshare.run()


if __name__ == "__main__":
    main()
