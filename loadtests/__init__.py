"""Load tests of the nerve gRPC service with locust (see docs/deploy.md, "Load tests").

    python loadtests/run.py --host 127.0.0.1:50051 --scenario steady --users 8 --duration 60s --out reports/load/

Only ``locustfile.py`` imports locust (which monkey-patches the process with gevent); the other modules are
plain Python so that tests and the runner can use them without that side effect.
"""
