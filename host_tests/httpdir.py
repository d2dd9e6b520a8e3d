"""A directory served over HTTP on 127.0.0.1 (an ephemeral port) for tests: package indexes, a repository.

    with Served(root) as web:
        web.url ("http://127.0.0.1:PORT/"), web.paths (every path requested, in order)
"""
import functools
import http.server
import threading


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the test reads .paths, not stderr
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        super().do_GET()


class Served:
    def __init__(self, root):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.server.paths = []
        self.paths = self.server.paths
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
