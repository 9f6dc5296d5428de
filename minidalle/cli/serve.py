"""`minidalle serve`: the web page (Generate, Score, Complete) on http://127.0.0.1:7860.

minidalle serve                                    # every bundled model
minidalle serve --model shapes runs/my/pipeline    # bundled names and pipeline folders
minidalle serve --host 0.0.0.0 --allow_remote      # reachable from other machines (see the README)

Needs the `ui` extra (Gradio). Models load once; the sampling step is compiled before the port opens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .args import arg, command


@dataclass
class ServeArguments:
    model: list[str] = arg(
        [], help="Bundled model names (shapes) and/or pipeline folders to offer; default: every bundled model."
    )
    host: str = arg("127.0.0.1", help="Address to listen on; one that is not loopback needs --allow_remote.")
    port: int = arg(7860, help="Port to listen on.", minimum=1, maximum=65535)
    allow_remote: bool = arg(
        False,
        help="Allow a --host other machines can reach: anyone who reaches the port can then generate, score and "
        "upload images, with no password and no TLS.",
    )
    concurrency: int = arg(1, help="Requests sampled at once; the rest wait in the queue.", minimum=1, maximum=64)
    max_queue: int = arg(16, help="Requests that may wait; beyond this the page says the queue is full.", minimum=1)
    compile: bool = arg(
        True,
        help="Compile the sampling step for a few batch sizes before the page opens (where a C++ compiler "
        "exists; 20-80 s per size on a CPU, cached by torch for later starts); --no_compile starts at once.",
    )
    compile_rows: list[int] = arg(
        [], help="The batch sizes (rows: images x candidates) compiled at start-up (default: 1 4 8 16)."
    )
    device: str = arg("", help="cpu or cuda (default: cuda when available).")


@command(
    ServeArguments,
    prog="minidalle serve",
    description="Serve a web page to generate images, score captions and complete images with minidalle models.",
)
def serve_main(args: ServeArguments, extra) -> None:
    from ..webui import Handlers, check_address, import_gradio, launch, load_models, resolve_models, warm_up_all
    from ..webui.sampling import WARM_ROWS

    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to the page, at start-up
    folders = resolve_models(args.model)
    check_address(args.host, args.port, args.allow_remote)
    import_gradio()  # before the models load: a missing extra is said at once
    models = load_models(folders, args.device)
    warm_up_all([m.sampler for m in models.values()], args.compile, args.compile_rows or WARM_ROWS)
    launch(Handlers(models), args.host, args.port, args.concurrency, args.max_queue)
