// robustness tests (being written)
