"""sleepjax: sleep foundation models on overnight polysomnography in JAX."""

__version__ = "0.1.0"
