"""Opening the page: check the address, import Gradio with its analytics off, queue, launch.

Nothing here reaches the network: analytics and version checks are off, there is no share link, no server-side
rendering (which would start a Node server) and no MCP server; the page's fonts and scripts ship in Gradio's wheel.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from ..errors import UserError
from .app import CSS, build_app
from .handlers import Handlers

logger = logging.getLogger("minidalle")

INSTALL_HINT = "pip install 'minidalle[ui]' (in a checkout: pip install -e '.[ui]')"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int, allow_remote: bool) -> None:
    """Before any model is loaded: a non-loopback host needs `allow_remote`, and the port must be free."""
    if not is_loopback(host) and not allow_remote:
        raise UserError(
            f"--host {host} would let other machines use the page (generate, score, upload images); "
            "add --allow_remote to mean it, or leave --host at 127.0.0.1"
        )
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no clash
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({reason}); pick another port") from None


def import_gradio():
    """Gradio, with its analytics and version check off (they would call api.gradio.app); a `UserError` naming
    the install command when the `ui` extra is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise UserError(f"the web page needs Gradio, which is not installed: {INSTALL_HINT}") from None
    return gradio


def launch(
    handlers: Handlers,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    max_queue: int = 16,
    block: bool = True,
):
    """Build the page and serve it; returns (the gr.Blocks app, its local URL). With `block=False` the server
    runs in a background thread (`app.close()` stops it), as the tests and the latency benchmark use it."""
    gr = import_gradio()
    app = build_app(handlers, concurrency)
    app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        show_error=False,  # our handlers say what went wrong; anything else stays in the server's log
        max_file_size=handlers.limits.max_upload_bytes,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        quiet=True,
        footer_links=["gradio"],
        theme=gr.themes.Default(),
        css=CSS,
    )
    logger.info("the page is at %s (Ctrl-C stops it)", url)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
