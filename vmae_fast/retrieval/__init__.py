"""Retrieval over an extract output: FAISS indexes tuned to a measured recall, queries, and their pictures.

    plan.py           which index fits (rows, dimension, memory) and the cheapest search setting meeting a recall
    index.py          Index: build (streamed from OUT, incremental), load, search; stored in OUT/index/
    search.py         queries: a video moment embedded as the run did, a stored clip, vectors
    contact_sheet.py  `search --show`: a PNG of the query's and the matches' frames
    results_page.py   `search --html`: a self-contained page whose cards play their segments
    dedup.py          `dedup`: near-duplicate groups (neighbours, a threshold read off the output, components)
    catalog.py        `serve`: the loaded indexes and the lookups a query needs (vectors, rows, videos, media files)
    upload.py         `serve`: an uploaded video embedded in a worker process (a hostile file costs one request)
    service.py        `serve`: the FastAPI app (JSON API, OpenAPI, /media with Range requests), uvicorn; web/: the page
                      (service.py needs the serve extra and is not imported here)
"""

from .dedup import find_groups
from .index import Index, Match, StaleIndexError, clip_vector
from .plan import parse_memory, plan_index
from .search import embed_video_at, run_query

__all__ = ["Index", "Match", "StaleIndexError", "clip_vector", "embed_video_at", "find_groups", "parse_memory",
           "plan_index", "run_query"]
