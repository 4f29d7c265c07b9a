"""The chargeplay trace format: schema, kernel tables, reading and writing."""
