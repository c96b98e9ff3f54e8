"""Clients of a jobcast server."""
