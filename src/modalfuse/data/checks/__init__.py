"""The split audit's checks, one module each; every module registers its check on import."""
