"""A key-echo API as people write one with FastAPI: each answer names the key the framework
decoded, from the path (`/users/{key}`, Starlette's `path` converter, so a key with `/` in it is
one parameter) or from the query (`/search?q=...`). For scripts/bench-keys's `echo` scenario,
which checks that every key reaches a server it did not write exactly as listed.

    uvicorn --app-dir scripts/servers key_echo:app --port 8000
"""
from fastapi import FastAPI

app = FastAPI()


@app.get("/users/{key:path}")
async def user(key: str):
    return {"key": key}


@app.get("/search")
async def search(q: str):
    return {"key": q}
