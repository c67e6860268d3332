"""faust benchmark: one option per child process (faust owns loop, signals, logging).

    python bench/faust/faust_bench.py                 # all options, 2 runs each
    python bench/faust/faust_bench.py --options agent,batch --runs 1 --n 100000

Parent: starts Tansu (memory), creates `events` (4 partitions), produces N keyed JSON
events (~155 B, 5,000 keys) once; each run uses a fresh consumer group from offset 0.
Child: runs a faust Worker programmatically and reports, relative to process spawn:
ready (faust 'Ready'), first assignment, first message, N-th message; events/s is
N / (t_last - t_first_msg).  Then it SIGTERMs itself; the parent times the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

OPTIONS = {
    # name: (mode, extra App kwargs)
    "agent_default": ("agent", {}),
    "agent": ("agent", {"broker_session_timeout": 6, "broker_heartbeat_interval": 1}),
    "agent_tuned": (
        "agent",
        {
            "broker_session_timeout": 6,
            "broker_heartbeat_interval": 1,
            "broker_max_poll_records": 5000,
            "stream_buffer_maxsize": 20000,
            "broker_commit_every": 50000,
            "broker_commit_interval": 5.0,
            "consumer_max_fetch_size": 16 * 1024 * 1024,
            "stream_wait_empty": False,
        },
    ),
    "take": ("take", {"broker_session_timeout": 6, "broker_heartbeat_interval": 1}),
    "agent_patched": (
        "agent_patched",
        {"broker_session_timeout": 6, "broker_heartbeat_interval": 1},
    ),
    "batch": ("batch", {}),
    # same, but faust's own consumer left on (default BootStrategy, no agents/topics)
    "batch_faust_consumer_on": (
        "batch",
        {"disable_faust_consumer": False, "topic_disable_leader": False},
    ),
}


# ------------------------------------------------------------------------- child
def child(a: argparse.Namespace) -> None:
    t_spawn = a.spawn_wall
    marks: dict = {}
    import faust

    marks["faust_imported_s"] = time.time() - t_spawn

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = time.time() - t_spawn

    mode, extra = OPTIONS[a.option]
    n = a.n
    state = {"count": 0}

    def finish() -> None:
        mark("done_s")
        with open(a.out, "w") as f:
            json.dump(marks, f)
        os.kill(os.getpid(), signal.SIGTERM)

    if mode == "batch":
        from batch_consumer_in_faust import create_app

        async def handler(batch):
            loads = json.loads
            c = 0
            for recs in batch.values():
                for r in recs:
                    loads(r.value)
                c += len(recs)
            if state["count"] == 0:
                mark("first_msg_s")
            state["count"] += c
            if state["count"] >= n and "done_s" not in marks:
                finish()

        app, bc = create_app(
            bootstrap=a.bootstrap,
            topic="events",
            group=a.group,
            web_port=a.web_port,
            handler=handler,
            app_id=a.group + "-host",
            **extra,
        )
        orig = bc._on_assigned

        def on_assigned(assigned):
            if assigned:
                mark("assigned_s")
            orig(assigned)

        bc._on_assigned = on_assigned
    else:
        if mode == "agent_patched":
            import faust_patch

            faust_patch.apply()
        kw = dict(
            broker=f"kafka://{a.bootstrap}",
            web_enabled=True,
            web_port=a.web_port,
            web_bind="127.0.0.1",
            topic_partitions=4,
            datadir=os.path.join(tempfile.gettempdir(), f"{a.group}-data"),
        )
        kw.update(extra)
        app = faust.App(a.group, **kw)
        topic = app.topic("events", value_serializer="json")

        @app.on_partitions_assigned.connect
        async def on_assigned(sender, assigned, **kwargs):
            if any(tp.topic == "events" for tp in assigned):
                mark("assigned_s")

        if mode == "take":

            @app.agent(topic)
            async def consume(stream):
                async for batch in stream.take(1000, within=0.5):
                    if state["count"] == 0:
                        mark("first_msg_s")
                    state["count"] += len(batch)
                    if state["count"] >= n and "done_s" not in marks:
                        finish()
        else:

            @app.agent(topic)
            async def consume(stream):
                async for _ev in stream:
                    c = state["count"] = state["count"] + 1
                    if c == 1:
                        mark("first_msg_s")
                    if c >= n and "done_s" not in marks:
                        finish()

    class TimedWorker(faust.Worker):
        async def on_startup_finished(self) -> None:
            mark("ready_s")
            await super().on_startup_finished()

    TimedWorker(
        app,
        loglevel=os.environ.get("BENCH_LOGLEVEL", "WARNING"),
        quiet=True,
        redirect_stdouts=False,
    ).execute_from_commandline()


# ------------------------------------------------------------------------ parent
def run_one(bs: str, option: str, n: int, group: str, web_port: int, timeout: float) -> dict:
    out = tempfile.mktemp(suffix=".json")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        option,
        "--bootstrap",
        bs,
        "--n",
        str(n),
        "--group",
        group,
        "--web-port",
        str(web_port),
        "--out",
        out,
        "--spawn-wall",
        repr(time.time()),
    ]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return {"option": option, "error": "timeout", "stderr": err[-2000:]}
    total = time.time() - t0
    if not os.path.exists(out):
        return {"option": option, "error": f"rc={p.returncode}", "stderr": err[-3000:]}
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    r.update(option=option, rc=p.returncode, exit_after_done_s=round(total - r["done_s"], 2))
    r["events_per_s"] = round(n / (r["done_s"] - r["first_msg_s"]))
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--bootstrap")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--group", default="bench")
    ap.add_argument("--web-port", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--spawn-wall", type=float)
    ap.add_argument(
        "--options", default="raw,agent_default,agent,agent_tuned,take,agent_patched,batch"
    )
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240)
    a = ap.parse_args()
    if a.child:
        a.option = a.child
        child(a)
        return
    from common import create_topic, free_port, load_avg, produce, tansu
    from raw_aiokafka import consume as raw_consume

    results = []
    with tansu() as bs:
        asyncio.run(create_topic(bs, "events", 4))
        prod_s = asyncio.run(produce(bs, "events", a.n))
        print(f"produced {a.n} events in {prod_s:.1f}s", flush=True)
        for run in range(a.runs):
            for opt in a.options.split(","):
                group = f"{opt}-{run}"
                if opt == "raw":
                    r = asyncio.run(raw_consume(bs, "events", a.n, True, group=group))
                    r = {
                        "option": "raw",
                        "events_per_s": round(r["eps"]),
                        "assigned_s": round(r["first_msg_s"], 2),
                    }
                else:
                    r = run_one(bs, opt, a.n, group, free_port(), a.timeout)
                r["run"] = run + 1
                r["load"] = load_avg()
                r = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                print(json.dumps(r), flush=True)
                results.append(r)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
