"""modelopt_serve: placeholder, filled in by its issue."""
