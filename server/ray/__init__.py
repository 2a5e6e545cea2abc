"""The sampling server on Ray Serve (the optional extra: pip install -e '.[ray]').

  deployment.py  the Serve deployment: server.app's FastAPI app as the ingress, one replica = one
                 process with one sampling loop on one device; `app` for `serve run` / `serve deploy`
  proxy.py       a middleware for Ray's HTTP proxies: a WebSocket whose replica died ends with an
                 error message and a close, not a dropped connection
  __main__.py    `python -m server.ray --replicas N ...`: the plain server's flags, on a local Ray
                 cluster or the one RAY_ADDRESS names

Nothing here is imported by `python -m server`, which never needs Ray.
"""
