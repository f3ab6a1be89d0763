"""Source side: install and uninstall the audit hooks in the bookings database."""
