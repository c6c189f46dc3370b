"""Feature analysis: per-unit statistics and dashboards, logit effects, neighbours, neurons, autointerp."""
