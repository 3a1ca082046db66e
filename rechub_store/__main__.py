"""`python -m rechub_store ...`: the same command line as `rechub-store ...`."""

from rechub_store.cli import main

if __name__ == "__main__":
    main()
