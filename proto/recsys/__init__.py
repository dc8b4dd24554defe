"""Generated gRPC contract of llmrec (see proto/recsys/v1/*.proto); import as `recsys.v1`."""
