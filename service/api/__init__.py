"""HTTP layer: dependencies, error handlers and one router module per resource."""
