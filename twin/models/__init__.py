"""Twin models: each a small class with parameters, simulate, calibrate and predict."""
