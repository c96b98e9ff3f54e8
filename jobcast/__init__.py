"""jobcast: run slow jobs behind a web app and push their progress live.

The one installed package. Its parts live in the repository's top-level folders:
``jobcast.server`` (``server/``), ``jobcast.client`` (``client/``) and
``jobcast.agents`` (``agents/``, the agent contract plugins import).
"""
