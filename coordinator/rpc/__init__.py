"""Generated protobuf and gRPC code for gradmesh.v1. Never edit by hand: run `python proto/generate.py`.

tests/test_proto_drift.py fails when these files differ from what proto/ generates.
"""
