"""Running models: data, precision, the adaptive-BN evaluator, training, schedules, progressive pruning, saving what was scored."""
