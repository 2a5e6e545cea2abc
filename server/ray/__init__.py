"""The sampling server on Ray Serve (the optional extra: pip install -e '.[ray]'): deployment.py, the Serve
deployment (`app` for `serve run` / `serve deploy`); proxy.py, what Ray's HTTP proxies add; __main__.py,
`python -m server.ray --replicas N ...`. Nothing here is imported by `python -m server`, which never needs Ray.
"""
