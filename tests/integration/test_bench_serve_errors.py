"""Issue 26, item 10: `modelopt bench-serve` against a URL where nothing (or no modelopt
server) listens says so in words, over real sockets."""

from __future__ import annotations

import http.server
import socket
import threading

from modelopt_core.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_port_says_nothing_listens(capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["bench-serve", url, "--requests", "5"]) == 1
    err = capsys.readouterr().err
    assert f"nothing listens at {url}" in err and "modelopt serve ARTIFACT" in err
    assert "ClientConnectorError" not in err  # not aiohttp's own words


def test_a_server_that_is_not_modelopt_is_named(capsys):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_error(404)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert main(["bench-serve", url, "--requests", "5"]) == 1
        err = capsys.readouterr().err
        assert f"{url} answered GET /spec with HTTP 404" in err and "modelopt server" in err
    finally:
        srv.shutdown()
        srv.server_close()
