"""The bare Litestar hello world that fnhost is compared with (bench/run.py).

python bench/apps/hello_litestar.py PORT     # uvicorn, configured as `fnhost serve` is
granian --interface asgi --loop uvloop bench.apps.hello_litestar:app
"""

from __future__ import annotations

import sys

from litestar import Litestar, MediaType, get


@get("/", media_type=MediaType.TEXT, sync_to_thread=False)
def hello() -> str:
    return "Hello, world!"


app = Litestar(route_handlers=[hello], debug=False, openapi_config=None)


if __name__ == "__main__":
    import uvicorn

    # The same server settings as `fnhost serve` (core/fnhost/cli.py).
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
    )
