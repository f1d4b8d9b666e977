"""`python -m elmo_dist` runs the same CLI as the `elmo-dist` console script."""
from elmo_dist.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
