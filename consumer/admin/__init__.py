"""Staff and SRE commands: migrations, tracking codes, scheduled deliveries."""
