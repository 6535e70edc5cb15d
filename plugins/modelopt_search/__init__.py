"""modelopt_search: placeholder, filled in by its issue."""
