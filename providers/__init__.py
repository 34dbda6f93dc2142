"""Provider adapters: one `Provider` protocol, one module per kind of upstream."""
