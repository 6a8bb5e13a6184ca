"""User-space services that run as ordinary kernel clients (the name server: DESIGN §6)."""
