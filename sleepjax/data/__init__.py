"""Online input pipeline: manifest -> Grain over ArrayRecord -> global jax.Arrays."""
