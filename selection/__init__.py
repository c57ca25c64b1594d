"""dsel: influence-based, capability-balanced instruction-data selection."""
