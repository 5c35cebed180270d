"""An item API as people build one with FastAPI and slowapi: the `limits` library's default
fixed window, counters in Redis (so that several uvicorn workers share them), the limit
announced on every answer (X-RateLimit-Limit, -Remaining, and -Reset as a fractional Unix
time). For scripts/bench-rate's `slowapi` scenarios.

    ITEMS_LIMIT=500/second REDIS_URL=redis://127.0.0.1:6390 \
        uvicorn --app-dir scripts/servers slowapi_items:app --workers 2 --port 8000
"""
import os

from fastapi import FastAPI, Request, Response
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

limiter = Limiter(
    key_func=get_remote_address,
    storage_uri=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
    headers_enabled=True,
)
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)


@app.get("/items/{item_id}")
@limiter.limit(os.environ.get("ITEMS_LIMIT", "500/second"))
async def item(item_id: int, request: Request, response: Response):
    return {"id": item_id, "name": f"item-{item_id}"}
