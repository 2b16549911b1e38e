"""The web status page (SPEC §10): a thin read layer over the functions behind
``scanrelay status``, ``runs``, ``show``, ``schedules`` and ``retry``, served by the
daemon itself (``web.listen``) from a uvicorn thread.

``server`` binds and runs it, ``app`` has the routes, ``guard`` the token check and the
security headers, ``fmt`` the template filters; templates and assets live beside them.
"""
