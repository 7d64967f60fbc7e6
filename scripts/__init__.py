"""Command-line programs of the project: the demo runner, its seed, its supervisor."""
