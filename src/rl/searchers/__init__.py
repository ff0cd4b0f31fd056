"""The searchers of the search stage, each implementing :class:`rl.searcher.Searcher`: ``reinforce`` (the
paper's Algorithm 1), ``random`` (uniform and uniform-over-feasible baselines), ``optuna_tpe`` (Optuna's TPE)
and ``greedy`` (AIMET's greedy ratio selection)."""
