"""Feature analysis: statistics and dashboards, splitting, universality, feature map, autointerp."""
