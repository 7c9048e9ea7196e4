"""The pruning core: model structure, cost model, legality rules, allocations, problems, criteria, the prune verb and model files."""
