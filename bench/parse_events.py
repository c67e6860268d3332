import json
import random
import time

from stream_detector.events import Event, parse_event

random.seed(1)
now = time.time()
recs = []
for i in range(100_000):
    d = {
        "video_id": f"video-{random.randrange(5000):05d}",
        "ts": round(now - random.random() * 3600, 3),
    }
    d[random.choice(["views", "likes", "comments", "shares"])] = 1
    if i % 10 == 0:
        d.update(views=random.randrange(100), likes=random.randrange(10))
    if i % 3 == 0:
        d["category"] = "music"
        d["region"] = "US"
    recs.append(json.dumps(d).encode())
iso = [
    json.dumps({"video_id": "v1", "ts": "2026-11-25T03:04:05.123Z", "likes": 1}).encode()
] * 100_000
print("avg bytes", sum(map(len, recs)) / len(recs))
for name, data in (("epoch", recs), ("iso", iso)):
    best = 0
    for _ in range(3):
        t = time.perf_counter()
        out = [
            parse_event(r, now=now, max_bytes=4096, max_count=10_000_000, max_future_s=3600)
            for r in data
        ]
        dt = time.perf_counter() - t
        best = max(best, len(data) / dt)
    assert all(type(o) is Event for o in out)
    t = time.perf_counter()
    [json.loads(r) for r in data]
    jl = len(data) / (time.perf_counter() - t)
    print(f"{name}: parse_event {best:,.0f} events/s; json.loads alone {jl:,.0f}/s")
