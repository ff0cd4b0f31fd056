"""Search for a compression scheme: python search.py search=aggressive (see conf/search.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from asr.data.errors import DataError
from rl.explored import ExploredSetError
from rl.space import SearchSpaceError
from shrinkml.search import StaleSearchError, run_search


@hydra.main(config_path="conf", config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_search(cfg)
    except (FileNotFoundError, DataError, SearchSpaceError, StaleSearchError, ExploredSetError) as err:
        print(f"search: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
