"""``omniseg serve``: a trained model behind a local HTTP server with a web page to try it.

:mod:`omniseg.serve.server` holds the request handling (standard library only), :mod:`omniseg.serve.page`
the single page it serves at ``/`` (plain HTML + JavaScript, nothing loaded from elsewhere).
"""
