"""The load controller: requests in flight, admission, and the load-adaptive operating point."""
