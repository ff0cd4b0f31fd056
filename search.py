"""Search for a compression scheme: python search.py search=aggressive (see conf/search.yaml)."""

import sys

from omegaconf import DictConfig

from common.cli import cli_main
from rl.explored import ExploredSetError
from rl.space import SearchSpaceError
from shrinkml.search import run_search


@cli_main("search", SearchSpaceError, ExploredSetError, config_path="conf", config_name="search")
def main(cfg: DictConfig) -> None:
    run_search(cfg)


if __name__ == "__main__":
    sys.exit(main())
