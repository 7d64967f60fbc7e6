"""Bounded, reproducible fuzzing of the public schemas: the same hypothesis settings for every run."""

from hypothesis import HealthCheck, Phase, settings

# Derandomized, no example database, no shrinking: the same cases in every CI run, and quick.
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
