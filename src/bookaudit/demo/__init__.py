"""The sample bookings database and the realistic day that `make demo` plays through the pipeline."""
