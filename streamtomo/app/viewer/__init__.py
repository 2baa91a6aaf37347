"""Live slice viewer: a web page over the HDF REST domain, served with a proxy.

The page's source is ``viewer/`` at the repository root (React + h5web, built with
Vite into ``pipeline/viewer/static``); :mod:`streamtomo.app.viewer.server` serves it and
proxies the endpoint (``start_viewer``); :mod:`streamtomo.app.viewer.cli` adds
``streamtomo view``. Nothing is imported here: the CLI must not pay for aiohttp
unless the viewer runs.
"""
