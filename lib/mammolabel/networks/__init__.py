"""One network module per paper method; shared building blocks live once."""
