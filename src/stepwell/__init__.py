"""stepwell: durable functions for Python."""
