#!/usr/bin/env python3
"""The obvious alternative, done fairly: one asyncio process, aiohttp with keep-alive, a
semaphore bounding the requests in flight, retries with backoff on 408/429/5xx and connection
errors, results committed to SQLite in batches of 1,000.

usage: scripts/aiohttp_fetcher.py URL_TEMPLATE START END CONCURRENCY DB
Prints one line: items, seconds, items/s.
"""
import asyncio
import sqlite3
import sys
import time

import aiohttp

RETRY = {408, 429, 500, 502, 503, 504}


async def fetch(session, sem, url, attempts=8):
    delay = 0.1
    for attempt in range(1, attempts + 1):
        async with sem:
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status not in RETRY:
                        return resp.status, body, attempt
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30)
    return None, b"", attempts


async def main():
    template, start, end, concurrency, db_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, status INTEGER, attempts INTEGER, body BLOB)")
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.monotonic()
    rows = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i):
            status, body, attempts = await fetch(session, sem, template.replace("{id}", str(i)))
            rows.append((i, status, attempts, body))

        # Work is queued in windows so memory stays flat, as flota's does.
        window = max(concurrency * 4, 1000)
        for lo in range(start, end, window):
            await asyncio.gather(*(one(i) for i in range(lo, min(lo + window, end))))
            if len(rows) >= 1000:
                db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", rows)
                db.commit()
                rows.clear()
    db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", rows)
    db.commit()
    wall = time.monotonic() - started
    n = end - start
    print(f"{n} {wall:.3f} {n / wall:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
