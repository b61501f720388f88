"""securefl."""
